"""`fitvision models` and `fitvision recipes`: the registries as aligned tables, or JSON.

Each handler takes the parsed arguments (``args.json``) and returns the exit status, as the CLI's
others do; the registries are imported inside, so that `fitvision --help` stays instant.
"""

from __future__ import annotations

import json


def cmd_models(args) -> int:
    from fitvision.models import model_table

    rows = model_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len("model"), *(len(r["name"]) for r in rows))
    print(f"{'model':<{width}}   parameters  description")
    for r in rows:
        print(f"{r['name']:<{width}} {r['params']:>12,}  {r['description']}")
    return 0


def cmd_recipes(args) -> int:
    from fitvision.recipes import recipe_table

    rows = recipe_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len("recipe"), *(len(r["name"]) for r in rows))
    print(f"{'recipe':<{width}}  purpose, then key settings (`--recipe NAME`; auto picks by hardware and data)")
    for r in rows:
        print(f"{r['name']:<{width}}  {r['purpose']}")
        print(f"{'':<{width}}    {r['settings']}")
    return 0
