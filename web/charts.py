"""Charts drawn on the server: SVG markup made from numbers, put in the page as it is.

No script draws anything in the browser (the console's Content-Security-Policy allows none).
Every label is escaped here, so a name holding `<`, `&` or `"` is text in the picture.
"""

from markupsafe import Markup, escape

WIDTH = 640
BAR = 22  # height of one bar, in px
GAP = 6
LABEL = 190  # room for the labels, left of the bars
VALUE = 110  # room for the values, right of the bars


def bar_chart(bars, title):
    """A horizontal bar chart: `bars` are (label, value, text) with value a number (it may be
    negative: such a bar grows left of the zero line) and text how the value is written."""
    bars = list(bars)
    height = GAP + len(bars) * (BAR + GAP)
    span = WIDTH - LABEL - VALUE
    low = min([0, *(float(value) for _, value, _ in bars)])
    high = max([0, *(float(value) for _, value, _ in bars)])
    scale = span / (high - low) if high > low else 0
    zero = LABEL + (0 - low) * scale
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {max(height, BAR)}" '
        f'role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for n, (label, value, text) in enumerate(bars):
        y = GAP + n * (BAR + GAP)
        length = abs(float(value)) * scale
        x = zero - length if float(value) < 0 else zero
        kind = "negative" if float(value) < 0 else "positive"
        parts.append(
            f'<text x="{LABEL - 8}" y="{y + BAR * 0.7:.1f}" text-anchor="end" class="label">{escape(_short(label))}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{max(length, 1):.1f}" height="{BAR}" class="bar {kind}"/>'
            f'<text x="{WIDTH - VALUE + 8}" y="{y + BAR * 0.7:.1f}" class="value">{escape(text)}</text>'
        )
    if bars:
        parts.append(f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height}" class="axis"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _short(label, most=28):
    label = str(label)
    return label if len(label) <= most else label[: most - 1] + "…"
