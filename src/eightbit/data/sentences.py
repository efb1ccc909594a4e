"""The sentence sets the project ships (no data is downloaded).

``eval_sentences()``: 240 sentences for fidelity and retrieval checks; ``calibration_sentences()``: 96
different sentences for calibrating static activation scales. Both are read from text files in this
package, generated once by ``python -m eightbit.data.sentences`` (deterministic).
"""
from __future__ import annotations

import random
from importlib import resources

_SUBJECTS = {
    "cooking": ["The chef", "My grandmother", "A young baker", "The restaurant owner", "Our neighbour"],
    "space": ["The astronaut", "A telescope", "The rover", "Mission control", "The space agency"],
    "finance": ["The central bank", "An investor", "The startup", "The stock market", "A pension fund"],
    "sports": ["The goalkeeper", "The marathon runner", "The coach", "The home team", "A young tennis player"],
    "medicine": ["The surgeon", "A nurse", "The hospital", "The research team", "The family doctor"],
    "weather": ["The storm", "A cold front", "The forecast", "Heavy rain", "The summer heat"],
    "software": ["The compiler", "A junior developer", "The database", "The new release", "The build server"],
    "music": ["The orchestra", "A jazz pianist", "The band", "The choir", "The young violinist"],
    "travel": ["The train", "A backpacker", "The airline", "The tour guide", "The ferry"],
    "nature": ["The old oak tree", "A family of otters", "The river", "The migrating geese", "The forest"],
    "education": ["The teacher", "A first-year student", "The university", "The school board", "The librarian"],
    "law": ["The judge", "The defence lawyer", "The jury", "The city council", "The court"],
}
_PREDICATES = {
    "cooking": ["slowly simmered the tomato sauce", "baked fresh bread before dawn", "seasoned the soup with thyme", "tasted the stew and added salt", "prepared a dish of roasted vegetables", "sharpened the knives before dinner service"],
    "space": ["captured images of a distant galaxy", "landed safely on the surface of Mars", "measured the orbit of a new comet", "launched a satellite into low orbit", "detected water ice near the lunar pole", "tracked the debris from an old rocket"],
    "finance": ["raised interest rates to fight inflation", "bought shares in a renewable energy firm", "reported record quarterly profits", "fell sharply after the earnings call", "diversified its bond portfolio", "secured a second round of venture funding"],
    "sports": ["saved a penalty in the final minute", "finished the race in under three hours", "changed tactics at half time", "won the championship after extra time", "served three aces in a row", "trained hard through the winter"],
    "medicine": ["performed a difficult heart operation", "checked the patient's blood pressure", "published results of a vaccine trial", "prescribed antibiotics for the infection", "opened a new ward for children", "recommended more sleep and exercise"],
    "weather": ["knocked down power lines across the valley", "brought snow to the mountain passes", "predicted sunshine for the weekend", "flooded several streets downtown", "broke temperature records in July", "moved quickly towards the coast"],
    "software": ["reported a type error on line forty", "fixed a memory leak in the parser", "crashed after the schema migration", "shipped with faster startup times", "ran the whole test suite overnight", "rejected the request with a timeout"],
    "music": ["performed a symphony by Beethoven", "improvised a long solo on the standard", "released a new album of folk songs", "rehearsed the requiem for Easter", "tuned the strings before the concert", "played to a sold-out hall"],
    "travel": ["arrived two hours late at the station", "explored the old town on foot", "cancelled flights because of the strike", "recommended a quiet mountain village", "crossed the channel in rough seas", "stopped at every small town on the line"],
    "nature": ["lost its leaves early this autumn", "built a den under the riverbank", "burst its banks after the thaw", "flew south in a long V formation", "recovered slowly after the wildfire", "sheltered deer during the hard winter"],
    "education": ["explained fractions with a pizza", "passed the final chemistry exam", "opened a new campus for engineering", "approved a longer lunch break", "catalogued a collection of rare maps", "graded essays late into the night"],
    "law": ["dismissed the case for lack of evidence", "called a surprise witness", "reached a unanimous verdict", "passed a new bylaw on parking", "appealed the ruling to a higher court", "postponed the hearing until spring"],
}
_CLAUSES = ["", " yesterday", " last week", " this morning", " after a long delay", " despite the criticism", " for the first time", " as expected"]


def _generate(seed: int, n_per_topic: int) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for topic in sorted(_SUBJECTS):
        seen: set[str] = set()
        while len(seen) < n_per_topic:
            s = f"{rng.choice(_SUBJECTS[topic])} {rng.choice(_PREDICATES[topic])}{rng.choice(_CLAUSES)}."
            if s not in seen:
                seen.add(s)
                out.append(s)
    rng.shuffle(out)
    return out


def _build() -> tuple[list[str], list[str]]:
    evals = _generate(seed=2022, n_per_topic=20)  # 12 topics x 20 = 240
    calib = [s for s in _generate(seed=2312, n_per_topic=12) if s not in set(evals)][:96]
    return evals, calib


def _read(name: str) -> list[str]:
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def eval_sentences() -> list[str]:
    """240 shipped evaluation sentences (12 topics, deterministic)."""
    return _read("eval_sentences.txt")


def calibration_sentences() -> list[str]:
    """96 shipped calibration sentences, disjoint from ``eval_sentences()``."""
    return _read("calibration_sentences.txt")


if __name__ == "__main__":
    from pathlib import Path

    here = Path(__file__).parent
    evals, calib = _build()
    (here / "eval_sentences.txt").write_text("\n".join(evals) + "\n", encoding="utf-8")
    (here / "calibration_sentences.txt").write_text("\n".join(calib) + "\n", encoding="utf-8")
    print(f"wrote {len(evals)} eval and {len(calib)} calibration sentences")
