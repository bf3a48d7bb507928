"""``results/README.md``: every committed benchmark result, with the command that produced it.

The page is assembled from the Markdown files the benchmarks wrote (never retyped), so its
tables are exactly the committed measurements.
"""

from __future__ import annotations

from pathlib import Path

from .common import write_text_atomic

#: (result stem, title, command that writes it); figures ``stem.png`` / ``stem-*.png`` are shown
SECTIONS: list[tuple[str, str, str]] = [
    ("denoise", "Denoising (BSD68)", "python cli.py benchmark denoise"),
    ("mri", "MRI reconstruction", "python cli.py benchmark mri"),
    ("mri-stride4", "MRI reconstruction, every 4th test slice", "python cli.py benchmark mri --stride 4"),
    ("deblur", "Deblurring", "python cli.py benchmark deblur"),
    ("deblur-stride5", "Deblurring, every 5th test image", "python cli.py benchmark deblur --stride 5"),
    ("fitting", "The 1-D fitting experiment", "python cli.py benchmark fitting"),
    ("activations", "Learned activations", "python cli.py benchmark activations"),
    ("speed", "Speed", "python cli.py benchmark speed"),
    ("layers", "Layer costs", "python cli.py benchmark layers"),
    ("large", "Large images", "python cli.py benchmark large"),
]


def _demote(markdown: str) -> str:
    """Shift the headings of an embedded result two levels down (below the section's)."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.splitlines())


def _belongs(name: str, stem: str) -> bool:
    """``name`` is ``stem.png`` or ``stem-<x>.png`` and no longer section stem claims it."""
    if name != f"{stem}.png" and not name.startswith(f"{stem}-"):
        return False
    stems = [v for other, _, _ in SECTIONS for v in (other, f"{other}-quick")]
    return not any(other != stem and other.startswith(stem) and name.startswith(other) for other in stems)


def run(quick: bool = False, output: str = "results") -> dict:
    """Rebuild ``OUTPUT/README.md`` from the result files present in ``OUTPUT``."""
    folder = Path(output)
    parts = ["# Results", "",
             "Every table below is a file written by the benchmark named in its section, from the "
             "committed code, on the machine it states; nothing is retyped. Rebuild this page with "
             "`python cli.py benchmark report`.", ""]
    present = []
    for stem, title, command in SECTIONS:
        # a full run's file, else its quick run's (the quick run only when asked for quick)
        variants = [(f"{stem}-quick", f"{title} (quick run)", " --quick")]
        if not quick:
            variants.insert(0, (stem, title, ""))
        found = [v for v in variants if (folder / f"{v[0]}.md").is_file()]
        if not found:
            continue
        variant, label, flag = found[0]
        source = folder / f"{variant}.md"
        present.append(variant)
        markdown = source.read_text()
        figures = sorted(p.name for p in folder.glob(f"{variant}*.png") if _belongs(p.name, variant))
        parts += [f"## {label}", "", f"Command: `{command}{flag}` (files `{variant}.json`, `{variant}.md`).", "",
                  _demote(markdown), "", *[f"![{f}]({f})" for f in figures if f"]({f})" not in markdown], ""]
    write_text_atomic(folder / "README.md", "\n".join(parts) + "\n")
    print(f"wrote {folder / 'README.md'} ({', '.join(present) or 'no results yet'})")
    return {"sections": present}
