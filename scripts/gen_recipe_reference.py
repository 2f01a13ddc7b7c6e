"""Write docs/recipe-reference.md from the settings' field docs."""

from pathlib import Path

from finetune.config.reference import reference_markdown

if __name__ == "__main__":
    out = Path(__file__).resolve().parents[1] / "docs" / "recipe-reference.md"
    out.write_text(reference_markdown(), encoding="utf-8")
    print(f"wrote {out}")
