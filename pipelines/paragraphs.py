"""The paragraphs stage: exact dedup of paragraphs (or lines) across the corpus, `data.dedup.paragraph`.

    data.dedup.paragraph: {enabled: true, unit: paragraph, max_docs: 1}

Web pages repeat boilerplate across documents (cookie banners, navigation, footers) that document-level dedup
cannot see, because the rest of each page differs (Marin removes repeated paragraphs exactly). After document
dedup, each surviving document's text is cut into units (paragraphs at blank lines, or lines) and each unit's
stripped text hashed (xxh64); a unit whose hash is in more than `max_docs` documents is removed from every one of
them but the first (the smallest uid: input order, the first source first, as document dedup keeps). Repeats
inside one document are left (that is the Gopher `dup_paragraphs` filter's business). A document left with
fewer than `min_doc_chars` characters is removed as `filter:paragraph_dedup`; task records are never edited.

On Ray, in three steps over groups of staging files, nothing per document on the driver:
  map     per group: (hash, uid) of each distinct unit of each document, cut into hash partitions
  reduce  per partition: the hashes in more than max_docs documents, and each (uid, hash) to remove, cut by group;
          the partition's most repeated hashes (stats.json: top)
  apply   per group: the documents with units to remove rewritten in their staging files (text, text_bytes; a
          document left too short gets its status), which tokenize and write then read as always
The result depends on the texts and uids alone: the same bytes whatever the workers, blocks or nodes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray
import xxhash

from raylm.core.io import atomic_open
from raylm.pipelines.config import ParagraphConfig
from raylm.pipelines.stage import DataRun, Stage, gather
from raylm.pipelines.staging import groups_of, survivors
from raylm.pipelines.stats import Stats

REASON = "filter:paragraph_dedup"
SEPARATOR = {"paragraph": "\n\n", "line": "\n"}
PAIRS = pa.schema([("hash", pa.uint64()), ("uid", pa.int64())])
TOP = 10  # the most repeated units reported in stats.json


def unit_hash(unit: str, min_chars: int) -> int:
    """The hash a unit is deduplicated by (its stripped text), or 0 for a unit too short to count."""
    s = unit.strip()
    if len(s) < max(min_chars, 1):
        return 0
    return xxhash.xxh64_intdigest(s.encode("utf-8")) or 1  # 0 means "not counted"


def doc_hashes(text: str, cfg: ParagraphConfig) -> set[int]:
    """The distinct hashes of a document's counted units."""
    return {h for u in text.split(SEPARATOR[cfg.unit]) if (h := unit_hash(u, cfg.min_chars))}


def without(text: str, gone: set[int], cfg: ParagraphConfig) -> tuple[str, int]:
    """The text without its units whose hash is in `gone`, and how many units went."""
    units = text.split(SEPARATOR[cfg.unit])
    keep = [u for u in units if unit_hash(u, cfg.min_chars) not in gone]
    return SEPARATOR[cfg.unit].join(keep), len(units) - len(keep)


def _map(group: list[dict], dups_dir: str | None, cfg: ParagraphConfig, parts: int) -> list[pa.Table]:
    dups = pads.dataset(dups_dir, format="parquet") if dups_dir is not None else None
    hashes, uids = [], []
    for s in group:
        t, mask = survivors(s["path"], s["first_uid"], s["last_uid"], dups, ["text"])
        for uid, text in zip(t["uid"].to_numpy()[mask], t["text"].filter(pa.array(mask)).to_pylist()):
            hs = doc_hashes(text, cfg)
            hashes += hs
            uids += [int(uid)] * len(hs)
    h, u = np.array(hashes, dtype=np.uint64), np.array(uids, dtype=np.int64)
    part = (h % np.uint64(parts)).astype(np.int64)
    out = [pa.table({"hash": h[part == p], "uid": u[part == p]}, schema=PAIRS) for p in range(parts)]
    return out if parts > 1 else out[0]  # one return value is one object, not a list of one


def _reduce(max_docs: int, firsts: list[int], *tables: pa.Table) -> list:
    """The (uid, hash) pairs to remove, one table per group (`firsts`: each group's first uid), then the
    partition's count of repeated hashes and its most repeated (hash, docs)."""
    t = pa.concat_tables(tables)
    g = t.group_by("hash").aggregate([("uid", "count"), ("uid", "min")])
    rep = g.filter(pc.greater(g["uid_count"], max_docs))
    pairs = t.join(rep.select(["hash", "uid_min"]), "hash", join_type="inner")
    pairs = pairs.filter(pc.not_equal(pairs["uid"], pairs["uid_min"])).select(["hash", "uid"])
    which = np.searchsorted(np.asarray(firsts, dtype=np.int64), pairs["uid"].to_numpy(), side="right") - 1
    out = [pairs.filter(pa.array(which == k)) for k in range(len(firsts))]
    top = rep.sort_by([("uid_count", "descending"), ("hash", "ascending")]).slice(0, TOP)
    return [*out, (rep.num_rows, list(zip(top["hash"].to_pylist(), top["uid_count"].to_pylist())))]


def _apply(group: list[dict], dups_dir: str | None, cfg: ParagraphConfig, top: list[int], *tables: pa.Table) -> dict:
    """Rewrites the group's staging files that hold documents with units to remove; the counts, and a text for
    each of the `top` hashes met."""
    pairs = pa.concat_tables(tables)
    gone: dict[int, set[int]] = {}
    for h, u in zip(pairs["hash"].to_pylist(), pairs["uid"].to_pylist()):
        gone.setdefault(u, set()).add(h)
    counts = {"units_removed": 0, "bytes_removed": 0, "docs_changed": 0, "docs_removed": 0}
    dups, samples, wanted = (pads.dataset(dups_dir, format="parquet") if dups_dir is not None else None), {}, set(top)
    edited = np.sort(np.fromiter(gone, dtype=np.int64, count=len(gone)))
    for s in group:
        lo, hi = np.searchsorted(edited, [s["first_uid"], s["last_uid"] + 1])
        if lo == hi:  # nothing to remove in this file: left as it is
            continue
        t, mask = survivors(s["path"], s["first_uid"], s["last_uid"], dups)  # every column: the file is written again
        cols = {name: t[name].to_pylist() for name in ("text", "text_bytes", "status")}
        uids = t["uid"].to_pylist()
        for i in np.flatnonzero(mask):
            uid = uids[i]
            if uid not in gone:
                continue
            text = cols["text"][i]
            if need := (gone[uid] & wanted) - samples.keys():  # a text for a most repeated unit not yet met: at most TOP times
                samples.update({h: u.strip()[:200] for u in text.split(SEPARATOR[cfg.unit]) if (h := unit_hash(u, cfg.min_chars)) in need})
            new, n = without(text, gone[uid], cfg)
            size = len(new.encode("utf-8"))
            counts["units_removed"] += n
            counts["bytes_removed"] += cols["text_bytes"][i] - size
            counts["docs_changed"] += 1
            if len(new.strip()) < cfg.min_doc_chars:
                cols["status"][i], cols["text"][i], size = REASON, None, 0
                counts["docs_removed"] += 1
            else:
                cols["text"][i] = new
            cols["text_bytes"][i] = size
        for name, values in cols.items():
            t = t.set_column(t.schema.get_field_index(name), name, pa.array(values, t.schema.field(name).type))
        with atomic_open(s["path"]) as f:  # a retried task writes the same bytes (its counts then miss what was done)
            pq.write_table(t, f, compression="zstd")
    return {"counts": counts, "samples": samples}


_MAP, _REDUCE, _APPLY = ray.remote(_map), ray.remote(_reduce), ray.remote(_apply)


class Paragraphs(Stage):
    """data.dedup.paragraph, after document dedup (see the module's docstring)."""

    name = "paragraphs"
    reads = ("_work/docs/*.parquet", "_work/dups/part-*.parquet")
    writes = ("_work/docs/*.parquet",)

    def enabled(self, run: DataRun) -> bool:
        return run.data.dedup.paragraph.enabled

    def run(self, run: DataRun, stats: Stats) -> None:
        cfg, P = run.data.dedup.paragraph, run.data.dedup.partitions
        groups = groups_of(run.staging, run.workers)
        dups_dir = run.dups_dir if run.dups is not None else None
        G = len(groups)
        mapped = [_MAP.options(num_returns=P).remote(g, dups_dir, cfg, P) for g in groups]
        mapped = [m if isinstance(m, list) else [m] for m in mapped]
        firsts = [g[0]["first_uid"] for g in groups]
        reduced = [_REDUCE.options(num_returns=G + 1).remote(cfg.max_docs, firsts, *[m[p] for m in mapped]) for p in range(P)]
        tops = gather([r[G] for r in reduced])
        top = sorted((pair for _, pairs in tops for pair in pairs), key=lambda x: (-x[1], x[0]))[:TOP]
        applied = gather([_APPLY.remote(g, dups_dir, cfg, [h for h, _ in top], *[r[k] for r in reduced]) for k, g in enumerate(groups)])
        counts = {k: sum(a["counts"][k] for a in applied) for k in applied[0]["counts"]} if applied else {}
        samples = {h: t for a in applied for h, t in a["samples"].items()}
        stats.counts.update(repeated_units=sum(n for n, _ in tops), **counts)
        stats.extra["top"] = [{"docs": n, "text": samples.get(h, "")} for h, n in top]
        run.say(
            f"paragraphs: {counts.get('units_removed', 0):,} repeated {cfg.unit}s removed ({counts.get('bytes_removed', 0):,} bytes) "
            f"from {counts.get('docs_changed', 0):,} documents; {counts.get('docs_removed', 0):,} left too short"
        )
