"""What the money rules (wallet.py) and the web and CLI share below them, free of Flask:
amounts in minor units (units.py), how rows are shown (views.py), the read side (books.py),
and the refusal every layer raises (refusals.py)."""
