"""Call the on-device API for a few demo shoppers: recommendations before and after new events.

    python examples/demo_shoppers.py BUNDLE [--public-key PUB] [--state DIR]

Uses only the lean runtime (``shelfrank.device``): no torch, no network.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from shelfrank.device import Recommender


def show(title: str, items) -> None:
    print(f"  {title}")
    for r in items:
        price = "" if r.price is None else f"  ${r.price:,.2f}"
        stock = "" if r.in_stock else "  (out of stock)"
        print(f"    {r.score:6.3f}  {r.title}  [{r.category} / {r.brand}]{price}{stock}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--public-key", help="the publisher's public key to trust (default: unpinned, with a warning)")
    ap.add_argument("--state", help="state folder (default: a fresh temporary one)")
    args = ap.parse_args()
    state = args.state or tempfile.mkdtemp(prefix="shelfrank-demo-state-")
    t0 = time.perf_counter()
    rec = Recommender.open(args.bundle, public_key=args.public_key, state_dir=state)
    print(f"opened {args.bundle} in {(time.perf_counter() - t0) * 1e3:.0f} ms: {len(rec.catalog):,} items")
    cat = rec.catalog
    by_category = {
        c: [cat.item_ids[r] for r in cat.rows_where({"category": c})[:3]]
        for c in ("Coffee", "Consoles", "Running", "Outdoor", "Games")
    }
    shoppers = [
        ("shopper-A", [(by_category[c][i], a) for c, i, a in (("Coffee", 0, "view"), ("Coffee", 1, "cart"))]),
        ("shopper-B", [(by_category["Consoles"][0], "purchase")]),
        ("shopper-C", [(by_category["Running"][2], "click"), (by_category["Outdoor"][1], "view")]),
    ]
    for user, events in shoppers:
        print(f"\n{user}")
        show("before any event (cold start: popular items)", rec.recommend(user, k=5))
        for item_id, action in events:
            rec.record(user, item_id, action)
            print(f"  + {action:8s} {cat.item(cat.index[item_id]).title}")
        t0 = time.perf_counter()
        recs = rec.recommend(user, k=5)
        ms = (time.perf_counter() - t0) * 1e3
        show(f"after those events ({ms:.1f} ms)", recs)
        show("in stock, under $60", rec.recommend(user, k=3, where={"in_stock": True, "max_price": 60}))
    print()
    game = by_category["Games"][0]
    show("similar to " + cat.item(cat.index[game]).title, rec.similar(game, k=3))
    show("search 'wireless headphones'", rec.search("wireless headphones", k=3))
    rec.close()


if __name__ == "__main__":
    main()
