"""The command line: `flask --app app wallet ...` (commands.py) and `flask --app app simulate` (simulator.py)."""
