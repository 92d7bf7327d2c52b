#!/usr/bin/env python3
"""Generate a large, awkward shop for the export's size bound (issue 11: `quick` ≤ 10 minutes for
any shop up to 500k events and 20k items). Not a test and not run in CI.

    python scripts/gen_shop.py /tmp/bigshop            # items.csv (20k) + events.csv (500k)
    time shelfrank export --dataset files --items /tmp/bigshop/items.csv \\
        --events /tmp/bigshop/events.csv --preset quick --out /tmp/bigshop/bundle --key publisher.key

What makes it awkward, on purpose (a real retailer's export looks like this):
- titles in many scripts and with emoji, commas, quotes, a few embedded newlines, some over 600
  characters, a few one character long; a fifth of the items with an empty brand, some with no
  price or category;
- `ts` as ISO 8601 with a space and no zone (`2023-04-01 09:30:00`), baskets of several
  purchases in the same second, so file order has to break ties;
- repeat purchases: consumables are re-bought (about a quarter of the purchases in those
  categories), sometimes back to back;
- a heavy-tailed history length: most shoppers have a handful of events, a few dozen have
  thousands (bots, staff accounts, the long histories that make a tower epoch slow);
- 0.1% of events name an item that is not in the items file (delisted), which the export skips.

The shop has structure for a ranker to find (shoppers keep to a few categories and move along
complementary ones), so the quality report's figures are not noise. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from datetime import datetime, timedelta
from pathlib import Path

CATEGORIES = [
    # (name, consumable: re-bought)
    ("Coffee", True),
    ("Tea", True),
    ("Pet food", True),
    ("Printer ink", True),
    ("Shampoo", True),
    ("Batteries", True),
    ("Vitamins", True),
    ("Diapers", True),
    ("Headphones", False),
    ("Keyboards", False),
    ("Monitors", False),
    ("Cookware", False),
    ("Knives", False),
    ("Board games", False),
    ("Puzzles", False),
    ("Running shoes", False),
    ("Rain jackets", False),
    ("Backpacks", False),
    ("Desk lamps", False),
    ("Garden tools", False),
    ("Yoga mats", False),
    ("Bicycles", False),
    ("Phone cases", False),
    ("Chargers", False),
    ("Notebooks", False),
    ("Pens", True),
    ("Candles", True),
    ("Socks", False),
    ("Watches", False),
    ("Sunglasses", False),
]
# what a shopper moves on to after a category (console → controller → game, here: lamp → bulbs)
COMPLEMENTS = {i: [(i + 1) % len(CATEGORIES), (i + 7) % len(CATEGORIES)] for i in range(len(CATEGORIES))}

WORDS = (
    "Classic Pro Max Mini Ultra Eco Deluxe Travel Family Organic Premium Compact Wireless Smart "
    "Heavy-Duty Vintage Edition Pack Set Bundle Original Lite Plus Extra Strong Soft Natural"
).split()
UNICODE_WORDS = [
    "Crème brûlée",
    "Grüße",
    "naïve",
    "Ærøskøbing",
    "日本茶",
    "抹茶ラテ",
    "커피",
    "Кофе",
    "قهوة",
    "קפה",
    "☕",
    "🐶🐱",
    "✨",
    "𝔉𝔞𝔫𝔠𝔶",
    "Zürich",
    "São Paulo",
    "İstanbul",
    "ß",
]
BRANDS = [f"Brand{i:03d}" for i in range(280)] + ["Nimbus", "Orbit", "Müller & Söhne", 'ACME "Pro"', "Łódź Works"]
ACTION_FUNNEL = ["view", "click", "cart", "purchase"]


def _title(rng: random.Random, cat: str, n: int) -> str:
    r = rng.random()
    if r < 0.003:
        return rng.choice(["X", "7", "é", "☕"])  # one character
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
    if r < 0.25:
        words.insert(rng.randrange(len(words) + 1), rng.choice(UNICODE_WORDS))
    title = f"{' '.join(words)} {cat} #{n}"
    if r > 0.99:  # very long: a marketplace seller's keyword dump
        title += " — " + ", ".join(rng.choice(WORDS + UNICODE_WORDS) for _ in range(rng.randint(80, 140)))
    elif r > 0.97:
        title = f'{title}, 2-pack "value", 12" x 8"'  # commas and quotes: CSV quoting
    elif r > 0.9695:
        title = f"{title}\nsecond line from a spreadsheet cell"  # an embedded newline
    return title


def make_items(rng: random.Random, n_items: int) -> tuple[list[dict], list[list[int]]]:
    items, by_cat = [], [[] for _ in CATEGORIES]
    for n in range(n_items):
        c = rng.randrange(len(CATEGORIES)) if rng.random() < 0.7 else n % len(CATEGORIES)
        cat = CATEGORIES[c][0]
        by_cat[c].append(n)
        items.append(
            {
                "item_id": f"SKU-{n:06d}",
                "title": _title(rng, cat, n),
                "category": "" if rng.random() < 0.03 else cat,
                "brand": "" if rng.random() < 0.2 else rng.choice(BRANDS),
                "price": "" if rng.random() < 0.05 else f"{rng.lognormvariate(3.0, 1.0):.2f}",
                "in_stock": "0" if rng.random() < 0.08 else "1",
            }
        )
    return items, by_cat


def _history_len(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.001:
        return rng.randint(1000, 4000)  # the long histories
    if r < 0.02:
        return rng.randint(60, 400)
    return min(60, 2 + int(rng.expovariate(1 / 9)))


def make_events(rng: random.Random, by_cat: list[list[int]], n_events: int) -> list[tuple]:
    start = datetime(2023, 1, 1)
    span = 365 * 86400
    events: list[tuple] = []  # (ts seconds, user, item id, action)
    u = 0
    while len(events) < n_events:
        user = f"shopper-{u:06d}"
        u += 1
        length = min(_history_len(rng), n_events - len(events))
        cats = [rng.randrange(len(CATEGORIES)) for _ in range(rng.randint(1, 3))]
        t = rng.randrange(span - 30 * 86400)
        # visits spread over the rest of the year, however many there are (a long history is dense)
        gap = max(600.0, (span - t) / (length / 3 + 1))
        bought: list[int] = []
        c = rng.choice(cats)
        k = 0
        while k < length:
            consumable = CATEGORIES[c][1]
            if bought and consumable and rng.random() < 0.25:
                # a repeat purchase of something bought before (sometimes right after it)
                item = rng.choice(bought[-3:])
                funnel = ["purchase"] if rng.random() < 0.5 else ["view", "purchase"]
            else:
                pool = by_cat[c]
                # half the picks Zipf-like among the category's first items (its best sellers)
                zipf = min(len(pool) - 1, int(rng.paretovariate(1.2)) - 1)
                item = pool[zipf] if rng.random() < 0.5 else rng.choice(pool)
                depth = rng.choices([1, 2, 3, 4], weights=[55, 20, 10, 15])[0]
                funnel = ACTION_FUNNEL[:depth]
            for action in funnel:
                if k >= length:
                    break
                t += rng.randint(5, 300)
                item_id = f"SKU-{item:06d}" if rng.random() > 0.001 else f"DELISTED-{rng.randrange(10**6):06d}"
                events.append((t, user, item_id, action))
                k += 1
            if funnel[-1] == "purchase":
                bought.append(item)
                # a basket: more purchases in the very same second (file order breaks the tie)
                while k < length and rng.random() < 0.15:
                    extra = rng.choice(by_cat[rng.choice(COMPLEMENTS[c])])
                    events.append((t, user, f"SKU-{extra:06d}", "purchase"))
                    bought.append(extra)
                    k += 1
                t += int(rng.expovariate(1 / gap))  # the next visit
            if rng.random() < 0.3:
                c = rng.choice(COMPLEMENTS[c] + cats)
            t = min(t, span - 1)
    # the shop's log is in time order, shoppers interleaved; a stable sort keeps each basket's order
    events.sort(key=lambda e: e[0])
    return [
        ((start + timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S"), user, item, a) for t, user, item, a in events
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("out", type=Path, help="folder to write items.csv and events.csv into")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    items, by_cat = make_items(rng, args.items)
    events = make_events(rng, by_cat, args.events)
    with (args.out / "items.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(items[0]))
        w.writeheader()
        w.writerows(items)
    with (args.out / "events.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "action", "ts"])
        w.writerows((user, item, action, ts) for ts, user, item, action in events)
    users = {e[1] for e in events}
    purchases = [(e[1], e[2]) for e in events if e[3] == "purchase"]
    repeats = len(purchases) - len(set(purchases))
    per_user: dict[str, int] = {}
    for e in events:
        per_user[e[1]] = per_user.get(e[1], 0) + 1
    lens = sorted(per_user.values())
    print(
        f"wrote {args.out}/items.csv ({len(items):,} items) and {args.out}/events.csv ({len(events):,} events, "
        f"{len(users):,} shoppers; history length median {lens[len(lens) // 2]}, max {lens[-1]}, "
        f"{sum(n >= 1000 for n in lens)} over 1,000; {repeats:,} repeat purchases of {len(purchases):,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
