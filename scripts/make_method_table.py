"""Write the Slicer module's method table (descriptions and typed settings) from the option declarations.

Usage: python scripts/make_method_table.py [--check]

The module shows the methods and their settings when it opens, before PyTorch is loaded (importing
the methods imports torch), so it reads them from DeepLungReg/Resources/MethodTable.json, which this
script writes from ``DeepLungRegLib.methods`` (each option's default, range, choices and help as
declared with ``DeepLungRegLib.options.option``). Run it after changing a method's options;
Testing/pytest/test_module_static.py fails while the file and the declarations differ. ``--check``
only compares and exits with 1 when they differ.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path

TABLE_PATH = Path(__file__).resolve().parents[1] / "DeepLungReg" / "Resources" / "MethodTable.json"

#: The editor of each declared option type: ``int``/``float`` a spin box, ``bool`` a check box,
#: ``choice`` a combo box, ``text`` a line edit, ``int_list``/``float_list`` a checked line edit.
KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "text",
         "tuple[int, ...]": "int_list", "tuple[float, ...]": "float_list"}


def _decimals(values) -> int:
    """Decimal places that show every one of ``values`` exactly (1 at least, 6 at most)."""
    places = [max(0, -Decimal(repr(float(v))).normalize().as_tuple().exponent) for v in values if v is not None]
    return int(min(6, max([1] + places)))


def editor(setting: dict) -> dict:
    """One row of the table: the option's name, editor kind, default, range, choices, decimals and help."""
    kind = KINDS.get(setting["type"].replace(" ", "").replace(",...", ", ..."))
    if kind is None:
        raise ValueError(f"make_method_table: no editor for option {setting['name']!r} of type {setting['type']!r}")
    if kind == "text" and setting.get("choices"):
        kind = "choice"
    row = {"name": setting["name"], "kind": kind, "default": setting["default"], "range": setting["range"],
           "choices": setting.get("choices"), "help": setting["help"]}
    if kind in ("float", "float_list"):
        default = setting["default"] if isinstance(setting["default"], list) else [setting["default"]]
        row["decimals"] = _decimals(default + list(setting["range"] or []))
    return row


def build_table() -> dict:
    """The table as the module reads it: ``{"default_method", "methods": {name: {"description", "settings"}}}``."""
    from DeepLungRegLib.methods import available_methods, method_settings
    from DeepLungRegLib.options import DEFAULT_METHOD

    return {"generated_by": "scripts/make_method_table.py (do not edit by hand)", "default_method": DEFAULT_METHOD,
            "methods": {name: {"description": description, "settings": [editor(s) for s in method_settings(name)]}
                        for name, description in available_methods().items()}}


def render(table: dict) -> str:
    return json.dumps(table, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render(build_table())
    if "--check" in argv:
        same = TABLE_PATH.is_file() and TABLE_PATH.read_text(encoding="utf-8") == text
        print(f"{TABLE_PATH} is {'in step with' if same else 'OUT OF STEP with'} the option declarations")
        return 0 if same else 1
    TABLE_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
