"""The generated demo shop: the embedded default for the README's main job and for fast tests.

A catalog with categories, brands, product lines, prices and stock, and shoppers whose
view → click → cart → purchase sessions follow hidden preferences: one to three favourite
categories, a favourite brand in each, a price sensitivity, and the habit of moving from a
product to its line-mates or to a complementary category (console → controller → game). All of
it is visible in item text, so a text encoder can learn it; none of it is given to the model.
Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from shelfrank.export.data import Catalog, Dataset, Events

# category -> (nouns, typical price, complementary categories)
CATEGORIES: dict[str, tuple[list[str], float, list[str]]] = {
    "Consoles": (["Console", "Handheld Console", "Console Bundle", "Retro Console"], 320, ["Controllers", "Games"]),
    "Controllers": (
        ["Wireless Controller", "Pro Controller", "Arcade Stick", "Racing Wheel"],
        55,
        ["Games", "Headsets"],
    ),
    "Games": (
        ["Adventure Game", "Racing Game", "Puzzle Game", "Shooter", "RPG", "Party Game"],
        45,
        ["Controllers", "Headsets"],
    ),
    "Headsets": (
        ["Gaming Headset", "Wireless Earbuds", "Studio Headphones", "Noise Cancelling Headphones"],
        90,
        ["Audio", "Games"],
    ),
    "Audio": (["Bluetooth Speaker", "Soundbar", "Turntable", "Smart Speaker"], 120, ["Headsets"]),
    "Board Games": (
        ["Strategy Board Game", "Card Game", "Family Board Game", "Cooperative Game"],
        35,
        ["Toys", "Books"],
    ),
    "Toys": (["Building Set", "Action Figure", "Plush Toy", "Remote Control Car"], 30, ["Board Games"]),
    "Books": (
        ["Fantasy Novel", "Cookbook", "Travel Guide", "Graphic Novel", "Science Fiction Novel"],
        18,
        ["Board Games", "Coffee"],
    ),
    "Coffee": (["Espresso Beans", "Ground Coffee", "Cold Brew Concentrate", "Single Origin Beans"], 16, ["Kitchen"]),
    "Kitchen": (
        ["Espresso Machine", "Burr Grinder", "Pour Over Kettle", "Milk Frother", "French Press"],
        85,
        ["Coffee"],
    ),
    "Running": (["Running Shoes", "Trail Running Shoes", "Running Socks", "Hydration Vest"], 95, ["Outdoor"]),
    "Outdoor": (["Hiking Backpack", "Tent", "Sleeping Bag", "Headlamp", "Water Filter"], 110, ["Running"]),
}
BRAND_ROOTS = [
    "Nimbus",
    "Aurora",
    "Vertex",
    "Kestrel",
    "Lumen",
    "Orbit",
    "Cobalt",
    "Juniper",
    "Summit",
    "Pixel",
    "Harbor",
    "Ember",
    "Quartz",
    "Falcon",
    "Willow",
    "Atlas",
    "Nova",
    "Tundra",
    "Sable",
    "Zephyr",
    "Marble",
    "Cedar",
    "Comet",
    "Drift",
    "Glacier",
    "Hollow",
    "Indigo",
    "Jasper",
    "Lotus",
    "Meridian",
]
ADJECTIVES = ["Classic", "Pro", "Ultra", "Lite", "Max", "Edge", "Air", "Prime", "Go", "Elite", "Mini", "Plus"]
COLOURS = ["Black", "White", "Red", "Blue", "Green", "Grey", "Orange", "Purple"]


def make_demo_shop(n_items: int = 3000, n_users: int = 4000, *, seed: int = 0) -> Dataset:
    """Generate the demo shop. About 25 distinct-item steps per shopper on average."""
    rng = np.random.default_rng(seed)
    cats = list(CATEGORIES)
    brands_of = {c: [BRAND_ROOTS[(7 * ci + 3 * b) % len(BRAND_ROOTS)] for b in range(5)] for ci, c in enumerate(cats)}
    ids, titles, cat_col, brand_col, price_col, stock_col, line_col = [], [], [], [], [], [], []
    cat_of_item = np.empty(n_items, np.int32)
    lines: dict[tuple[int, int, int], list[int]] = {}
    used: dict[str, int] = {}
    for row in range(n_items):
        ci = int(rng.integers(len(cats)))
        cat = cats[ci]
        nouns, base_price, _ = CATEGORIES[cat]
        bi = int(rng.zipf(1.6) - 1) % 5
        brand = brands_of[cat][bi]
        ni = int(rng.integers(len(nouns)))
        adj = ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]
        gen = int(rng.integers(1, 6))
        title = f"{brand} {adj} {nouns[ni]} {gen}"
        if rng.random() < 0.4:
            title += f" - {COLOURS[int(rng.integers(len(COLOURS)))]}"
        used[title] = used.get(title, 0) + 1
        if used[title] > 1:  # keep titles unique, as a shop would
            title += f" (Edition {used[title]})"
        price = round(float(base_price * rng.lognormal(0.0, 0.45)), 2)
        ids.append(f"SKU-{row:05d}")
        titles.append(title)
        cat_col.append(cat)
        brand_col.append(brand)
        price_col.append(price)
        stock_col.append(bool(rng.random() < 0.9))
        cat_of_item[row] = ci
        line = (ci, bi, ni)
        line_col.append(line)
        lines.setdefault(line, []).append(row)
    catalog = Catalog(ids, titles, cat_col, brand_col, np.asarray(price_col), np.asarray(stock_col, bool))

    prices = np.asarray(price_col)
    by_cat = [np.flatnonzero(cat_of_item == ci) for ci in range(len(cats))]
    brand_idx = np.asarray([brands_of[c].index(b) for c, b in zip(cat_col, brand_col, strict=True)])
    appeal = rng.lognormal(0.0, 1.0, n_items)  # some products are simply more popular

    users, u_col, i_col, a_col, t_col = [], [], [], [], []
    start = 1_700_000_000.0
    for u in range(n_users):
        users.append(f"shopper-{u:05d}")
        fav = rng.choice(len(cats), size=int(rng.integers(1, 4)), replace=False)
        fav_w = rng.dirichlet(np.ones(len(fav)))
        fav_brand = {int(c): int(rng.integers(5)) for c in fav}
        thrift = float(rng.uniform(0.0, 1.5))  # how much price puts this shopper off
        n_steps = int(rng.integers(6, 45))
        prev = -1
        t = start + float(rng.uniform(0, 30 * 86400))  # shoppers arrive over a month
        for _ in range(n_steps):
            r = rng.random()
            if prev >= 0 and r < 0.35:  # stay on the product line
                cand = np.asarray(lines[line_col[prev]])
            elif prev >= 0 and r < 0.6:  # move to a complementary category
                comp = CATEGORIES[cats[cat_of_item[prev]]][2]
                cand = by_cat[cats.index(comp[int(rng.integers(len(comp)))])]
            else:  # back to one of the favourite categories
                cand = by_cat[int(fav[rng.choice(len(fav), p=fav_w)])]
            c = int(cat_of_item[cand[0]])
            w = appeal[cand] * np.exp(-thrift * np.log1p(prices[cand]) / 3)
            if c in fav_brand:
                w = w * np.where(brand_idx[cand] == fav_brand[c], 6.0, 1.0)
            if prev >= 0:
                w = w * (cand != prev)
            if w.sum() <= 0:
                continue
            item = int(cand[rng.choice(len(cand), p=w / w.sum())])
            liked = (c in fav_brand and brand_idx[item] == fav_brand[c]) or rng.random() < 0.3
            funnel = [0]
            if rng.random() < (0.7 if liked else 0.35):
                funnel.append(1)
                if rng.random() < (0.5 if liked else 0.15):
                    funnel.append(2)
                    if rng.random() < 0.6 and stock_col[item]:
                        funnel.append(3)
            for a in funnel:
                t += float(rng.exponential(40))
                u_col.append(u)
                i_col.append(item)
                a_col.append(a)
                t_col.append(t)
            prev = item
    # shoppers were generated one after another; interleave them by time like a real log
    ts = np.asarray(t_col)
    order = np.lexsort((np.arange(len(ts)), ts))
    ev = Events(
        np.asarray(u_col, np.int32)[order],
        np.asarray(i_col, np.int32)[order],
        np.asarray(a_col, np.int8)[order],
        ts[order],
    )
    return Dataset("demo", catalog, ev, users)
