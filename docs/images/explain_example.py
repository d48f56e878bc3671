"""Draws docs/images/explain-example.png: a similarity map of a tiled A4 page, from make demo's
random-weight bundle (the map shows the geometry, not what a trained model looks at).

    python docs/images/explain_example.py [BUNDLE]     # default build/bundle-random
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import ColLFM2
from runtime.explain import explain, render

LINES = ["INVOICE #2024-117", "Bill to: Example GmbH", "", "Item          Qty    Price", "Widget          4    12.00",
         "Gadget          1    99.00", "", "Total amount due: 147.00 EUR", "", "Payment within 30 days.", "",
         "Bank: Example Bank, IBAN DE00 1234"]  # fmt: skip


def main() -> None:
    model = ColLFM2.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else "build/bundle-random", precision="fp32")
    page = Image.new("RGB", (1240, 1754), "white")  # A4 at 150 dpi: 3x2 tiles + thumbnail
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=44)
    for i, text in enumerate(LINES):
        draw.text((90, 120 + i * 90), text, fill="black", font=font)
    draw.rectangle((90, 1300, 1150, 1650), outline="black", width=4)
    draw.text((120, 1330), "Notes: delivery to the loading dock, gate 3.", fill="black", font=font)
    expl = explain(model, "total amount due", page)
    img = render(expl, page, "max", title="RANDOM WEIGHTS (geometry only): 'total amount due', max over tokens")
    img = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
    out = Path(__file__).resolve().parent / "explain-example.png"
    img.save(out, optimize=True)
    print(f"wrote {out} ({expl.tiles[0]}x{expl.tiles[1]} tiles, {len(expl.tokens)} query tokens)")


if __name__ == "__main__":
    main()
