"""The 25 LMentry scorers, re-implemented from the semantics of ``aviaefrat/lmentry`` ``lmentry/scorers/*.py``
(commit 646ae908). Each scorer maps ``(prediction, example)`` to ``(score, certainty)`` with both in {0, 1}.

The official scorers are regex families; the behaviour kept here on purpose, including its quirks, so that
accuracies are comparable with published LMentry numbers:

* predictions are stripped, lower-cased, runs of spaces collapsed and ``_`` replaced by a space;
* a task-specific *negative check* may return a certain 0 first;
* the *simple scorer*: the whole prediction is the answer (optional final ``.``), or every alphanumeric word
  matches the answer pattern; a prediction without any alphanumeric character is a certain 0 there;
* the *certainty scorer*: task phrasings (with prefixes and suffixes) matched against the prediction; a
  full match is a certain 1, a match anywhere an uncertain 1. The patterns are lower-cased before matching
  (so ``\\W`` in a pattern becomes ``\\w``, as in the original);
* known quirks kept: the ``last_word`` scorer also accepts "first word: X"; the ``ends_with_letter`` scorer
  has two phrasings glued together (a missing comma upstream); ``word_not_containing`` uses the task input
  as a regex (an input that is not a valid regex simply does not match here instead of crashing).
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable, Iterable
from typing import Any

from num2words import num2words

Score = tuple[int, int]
_NW = r"[^a-zA-Z0-9_]"  # \W spelled so that lower-casing the pattern keeps its meaning
_Q = r"[\"'\.,]*"  # optional quotes/punctuation around an argument


# ------------------------------------------------------------------------------------------- argument regexes


def word_rx(word: str) -> str:
    return rf"(The word )?{_Q}\b{word}\b{_Q}"


def letter_rx(letter: str) -> str:
    return rf"(The letter )?{_Q}\b{letter}\b{_Q}"


def sentence_rx(sentence: str) -> str:
    return rf"((The sentence )?{_Q}{sentence}{_Q}|The sentence)"


def number_forms_rx(n: int) -> str:
    words = num2words(n)
    return rf"(\b{n}\b|{words}|{words.replace('-', ' ')})"


def number_rx(n: int) -> str:
    return rf"(The number )?{_Q}\b{number_forms_rx(n)}\b{_Q}"


def words_rx(words: list[str]) -> str:
    body = f"{_NW}*"
    for i, w in enumerate(words):
        body += rf"{w}{_NW}+"
        if i == len(words) - 2:
            body += rf"(and{_NW}+)?"
    return rf"(The words )?{body}{_NW}*"


def swap(s: str, a: str, b: str) -> str:
    """Exchange every occurrence of ``a`` and ``b`` in ``s`` (placeholders as long as ``s``)."""
    t1, t2 = "X" * len(s), "Y" * len(s)
    return s.replace(a, t1).replace(b, t2).replace(t1, b).replace(t2, a)


# ------------------------------------------------------------------------------------------------ machinery


def normalize(s: str) -> str:
    return re.sub(r" +", " ", s.strip().lower())


def normalize_prediction(prediction: str, truncate: bool = False) -> str:
    p = normalize(prediction).replace("_", " ")
    if truncate:  # the official option for base LMs that cannot stop (first line, up to the first ".")
        p = p.split("\n")[0].split(".")[0]
    return p


def answer_phrasings(target: str) -> list[str]:
    return [rf"{target} is the answer", rf"The answer is {target}", rf"The correct answer is {target}", rf"Answer: {target}"]


def simple_score(pred: str, answer: str, repetitions: bool = True) -> tuple[int | None, int | None]:
    if not re.search(r"[^\W_]", pred):
        return 0, 1
    score = cert = None
    if re.match(rf"{answer}\.?$", pred, flags=re.IGNORECASE):
        score, cert = 1, 1
    if repetitions and all(re.match(answer + "$", w) for w in re.findall(r"\b[a-z\d]+\b", pred)):
        score, cert = 1, 1
    return score, cert


def phrasing_score(pred: str, patterns: Iterable[str], prefixes: Iterable[str] = ("",), suffixes: Iterable[str] = ("",)) -> Score:
    """Prefix/suffix outer loop, patterns inner (the original order: the plain patterns are tried first)."""
    patterns = list(patterns)
    score = 0
    for prefix, suffix in itertools.product(list(prefixes), list(suffixes)):
        for base in patterns:
            rx = normalize(prefix + base + suffix)
            if re.match(rx + r"\.?$", pred):
                return 1, 1
            if re.search(rx, pred):
                score = 1
    return score, 0


def _absent(pred: str, answer: str) -> bool:
    return not re.search(rf"\b{answer}\b", pred)


def _simple_then(pred: str, answer_rx: str, patterns: Callable[[], list[str]], prefixes=("",), suffixes=("",), repetitions=True) -> Score:
    s, c = simple_score(pred, answer_rx, repetitions)
    if s:
        return s, c
    return phrasing_score(pred, patterns(), prefixes, suffixes)


def _exact_list(pred: str, exact: list[str]) -> Score:
    for rx in exact:
        s, c = simple_score(pred, rx)
        if s:
            return s, c
    return 0, 0


# ---------------------------------------------------------------------------------------------------- tasks


def _yes_no(pred: str, answer: str, extra: list[str]) -> Score:
    opposite = "no" if answer == "yes" else "yes"
    if re.match(rf"{opposite}\.?$", pred):
        return 0, 1
    return _simple_then(pred, answer, lambda: [*extra, rf"^{answer}\b", *answer_phrasings(answer)])


def all_words_from_category(pred: str, md: dict[str, Any]) -> Score:
    answer = "yes" if md["num_distractors"] == 0 else "no"
    category = md["category"]
    category = {
        "items of clothing": rf"({category}|clothes|clothing)",
        "furniture": rf"({category}|pieces of furniture)",
        "fruit": rf"({category}|fruits)",
    }.get(category, category)
    all_words = r"(all of these words|all of those words|all of the words|they all)"
    listed, belong = r"(listed|in the list)", r"(represent|are types of|refer to types of)"
    extra = [rf"{answer}, the list contains only {category}", rf"{answer}, {all_words}( {listed})? {belong} {category}"]
    return _yes_no(pred, answer, extra)


def any_words_from_category(pred: str, md: dict[str, Any]) -> Score:
    answer = "yes" if md["num_words"] > md["num_distractors"] else "no"
    return _yes_no(pred, answer, [])


def _number_task(pred: str, md: dict[str, Any], bigger_task: bool) -> Score:
    words = re.findall(r"\b[a-z\d]+\b", pred)
    if len(set(words)) == 1 and words[0] != str(md["answer"]):
        return 0, 1
    ans, dis = number_rx(md["answer"]), number_rx(md["distractor"])
    big, small = r"(bigger|larger)", "smaller"
    word, other = (big, small) if bigger_task else (small, big)

    def patterns() -> list[str]:
        base = [rf"{ans} is {word}", rf"{ans} is {word} than {dis}", rf"{ans} is the {word} number", rf"The {word} number is {ans}"]
        base += [swap(s, ans, dis).replace(word, other) for s in base]
        return base + answer_phrasings(ans)

    n1, n2 = md["n1"], md["n2"]
    prefixes = ["", f"Of the numbers {n1} and {n2}, ", f"From the numbers {n1} and {n2}, ", f"Between the numbers {n1} and {n2}, "]
    return _simple_then(pred, ans, patterns, prefixes)


def bigger_number(pred: str, md: dict[str, Any]) -> Score:
    return _number_task(pred, md, True)


def smaller_number(pred: str, md: dict[str, Any]) -> Score:
    return _number_task(pred, md, False)


def _letter_word_task(pred: str, md: dict[str, Any], first: bool) -> Score:
    letter = md["letter"]
    words = re.findall(r"\b[a-z]+\b", pred)
    if all((w[0] if first else w[-1]) != letter for w in words):
        return 0, 1
    any_chars = r"\w*" if letter in {"a", "i"} else r"\w+"
    word = word_rx(rf"{letter}-?{any_chars}" if first else rf"{any_chars}{letter}")
    let = letter_rx(letter)
    a, possible, word_ = r"(a|one)", r"possible( such)?", r"(word|answer)"

    def patterns() -> list[str]:
        if first:
            starts, starting = r"(starts|begins)", r"(starting|beginning)"
            base = [
                rf"{a} {possible} {word_} is {word}",
                rf"{word} is {a} {possible} {word_}",
                rf"{word} {starts} with {let}",
                rf"{word} is {a} word that {starts} with {let}",
                rf"{word} is {a} word {starting} with {let}",
                rf"A word starting with {let} is {word}",
                rf"{word} is {a} word whose first letter is {let}",
                rf"{let} is for {word}",
                rf"How about {word}",
                rf"May I suggest {word}",
            ]
        else:
            base = [
                rf"{a} {possible} {word_} is {word}",
                rf"{word} is {a} {possible} {word_}",
                rf"{word} ends with {let}",
                rf"{word} is {a} word that ends with {let}",
                rf"{word} is {a} word ending with {let}",
                rf"A word ending with {let} is {word}",
                rf"{word} is {a} word whose last letter is {let}" rf"How about {word}",  # glued upstream (missing comma)
                rf"May I suggest {word}",
            ]
        return base + answer_phrasings(word)

    return _simple_then(pred, word, patterns)


def starts_with_letter(pred: str, md: dict[str, Any]) -> Score:
    return _letter_word_task(pred, md, True)


def ends_with_letter(pred: str, md: dict[str, Any]) -> Score:
    return _letter_word_task(pred, md, False)


def _sentence_word_task(pred: str, md: dict[str, Any], starts: bool) -> Score:
    raw = md["word"].lower()
    if _absent(pred, raw):
        return 0, 1
    word = word_rx(raw)
    valid = r"(a|i|\w\w+)"
    if starts:
        sentence = rf"{_NW}*{word}{_NW}+{valid}.*"
        a = r"(a|one)"
        prefixes = [
            r"The sentence( is)?",
            rf"{a} sentence that starts with {word}( is)?",
            rf"{a} sentence starting with {word}( is)?",
            rf"{a} sentence whose first word is {word}( is)?",
        ]
        suffixes = [
            rf"starts with {word}",
            rf"is a sentence that starts with {word}",
            rf"is a sentence starting with {word}",
            rf"is a sentence whose first word is {word}",
        ]
    else:
        sentence = rf".*{valid}{_NW}+{word}{_NW}*"
        a, last = r"(a|one)", r"(last|final)"
        prefixes = [
            r"The sentence( is)?",
            rf"{a} sentence that ends with {word} ( is)?",  # the stray space is upstream's
            rf"{a} sentence ending with {word}( is)?",
            rf"{a} sentence whose {last} word is {word}( is)?",
        ]
        suffixes = [r"$"]
    patterns = [sentence, *answer_phrasings(sentence)]
    # the repetition case of the simple scorer cannot apply to a whole-sentence pattern, as upstream notes
    return _simple_then(pred, sentence, lambda: patterns, prefixes, suffixes)


def starts_with_word(pred: str, md: dict[str, Any]) -> Score:
    return _sentence_word_task(pred, md, True)


def ends_with_word(pred: str, md: dict[str, Any]) -> Score:
    return _sentence_word_task(pred, md, False)


def first_alphabetically(pred: str, md: dict[str, Any]) -> Score:
    words = re.findall(r"\b[a-z]+\b", pred)
    if len(words) == 1 and words[0] != md["answer"]:
        return 0, 1
    ans, dis = word_rx(md["answer"]), word_rx(md["distractor"])
    for rx in (ans, rf"{ans} does"):
        s, c = simple_score(pred, rx)
        if s:
            return s, c
    comes = "(comes|is)"
    patterns = [
        rf"{ans} {comes} first",
        rf"{dis} {comes} second",
        rf"{dis} {comes} after",
        rf"{ans} {comes} before {dis}",
        rf"{dis} {comes} after {ans}",
        *answer_phrasings(ans),
    ]
    w1, w2 = word_rx(md["word1"]), word_rx(md["word2"])
    prefixes = ["", "Alphabetically, ", "In an alphabetical order, ", "In alphabetical order, ", f"Of the words {w1} and {w2}, "]
    suffixes = ["", " alphabetically", " in an alphabetical order", " in alphabetical order", " in the dictionary"]
    return phrasing_score(pred, patterns, prefixes, suffixes)


def _letter_of_word(pred: str, md: dict[str, Any], first: bool) -> Score:
    if _absent(pred, md["answer"]):
        return 0, 1
    ans, word, of = letter_rx(md["answer"]), word_rx(md["word"]), "(of|in)"

    def patterns() -> list[str]:
        if first:
            starts = "(starts|begins)"
            base = [
                rf"The first letter is {ans}",
                rf"The first letter {of} {word} is {ans}",
                rf"{ans} is the first letter {of} {word}",
                rf"{word} {starts} with {ans}",
                rf"The letter that {word} {starts} with is {ans}",
                rf"{ans} is the starting letter {of} {word}",
                rf"{word}: {ans}",
                rf"First letter: {ans}",
            ]
        else:
            base = [
                rf"The last letter is {ans}",
                rf"The last letter {of} {word} is {ans}",
                rf"{ans} is the last letter {of} {word}",
                rf"{word} ends with {ans}",
                rf"The letter that {word} ends with is {ans}",
                rf"{ans} is the final letter {of} {word}",
                rf"{word}: {ans}",
                rf"Last letter: {ans}",
            ]
        return base + answer_phrasings(ans)

    return _simple_then(pred, ans, patterns)


def first_letter(pred: str, md: dict[str, Any]) -> Score:
    return _letter_of_word(pred, md, True)


def last_letter(pred: str, md: dict[str, Any]) -> Score:
    return _letter_of_word(pred, md, False)


def _word_of_sentence(pred: str, md: dict[str, Any], first: bool) -> Score:
    raw = md["answer"].lower()
    if _absent(pred, raw):
        return 0, 1
    ans, sent = word_rx(raw), sentence_rx(md["sentence"].lower())
    which = "first" if first else "last"

    def patterns() -> list[str]:
        return [
            rf"The {which} word is {ans}",
            rf"The {which} word (of|in) {sent} is {ans}",
            rf"{ans} is the {which} word",
            rf"{sent} begins with {ans}" if first else rf"{sent} ends with {ans}",
            rf"First word\W+{ans}",  # upstream's last_word scorer also has "First word" here
            *answer_phrasings(ans),
        ]

    return _simple_then(pred, ans, patterns, ["", f"In {sent} "], ["", f" (of|in) {sent}"])


def first_word(pred: str, md: dict[str, Any]) -> Score:
    return _word_of_sentence(pred, md, True)


def last_word(pred: str, md: dict[str, Any]) -> Score:
    return _word_of_sentence(pred, md, False)


def homophones(pred: str, md: dict[str, Any]) -> Score:
    if _absent(pred, md["answer"]):
        return 0, 1
    ans = word_rx(md["answer"])
    s, c = simple_score(pred, ans)
    if s:
        return s, c
    q, d = word_rx(md["query"]), word_rx(md["distractor"])
    but, like = r"(\.,)? (but|and)", "(like|similar to)"
    exact = [
        rf"{q} sounds {like} {ans}",
        rf"{q} sounds {like} {ans}{but} not {like} {d}",
        rf"{q} sounds {like} {ans}{but} {d} does not",
        rf"{q} and {ans} sound alike",
        rf"{q} sounds more {like} {ans}",
        rf"{q} sounds more {like} {ans} than( like)? {d}( does)?",
        rf"{q} sounds most {like} {ans}",
        rf"{q} is a homophone of {ans}",
        rf"{q} and {ans} are homophones( of each other)?",
        rf"The homophone of {q} is {ans}",
    ]
    exact += [swap(s, ans, q) for s in exact]
    return _exact_list(pred, exact)


def rhyming_word(pred: str, md: dict[str, Any]) -> Score:
    words = re.findall(r"\b[a-z]+\b", pred)
    if len(words) == 1 and words[0] != md["answer"]:
        return 0, 1
    ans = word_rx(md["answer"])
    s, c = simple_score(pred, ans)
    if s:
        return s, c
    q, d = word_rx(md["query"]), word_rx(md["distractor"])
    a, while_, doesnt = r"(a|the)", "(while|but|and)", r"(does not|doesn't)"
    exact = [
        rf"{q} rhymes with {ans}( and not with {d})?",
        rf"{q} is {a} rhyme of {ans}( and not of {d})?",
        rf"{q} and {ans} rhyme",
        rf"{q} and {ans} are rhymes",
        rf"{q} and {ans} are words that rhyme",
        rf"{a} rhyme of {q} is {ans}( and not {d})?",
        rf"{a} word rhyming with {q} is {ans}",
        rf"{a} word that rhymes with {q} is {ans}",
        rf"{q} and {ans}( both)? rhyme( with each other)?, {while_} {d} {doesnt} rhyme with either( word)?",
    ]
    exact += [swap(s, ans, q) for s in exact]
    exact += [
        rf"{d} {doesnt} rhyme with {q}(\s+{ans} (rhymes|does rhyme) with {q})?",
        rf"{q} {doesnt} rhyme with {d}(\s+{q} (rhymes|does rhyme) with {ans})?",
        rf"{ans} rhymes with {q}\s+{d} {doesnt} rhyme with {q}",
    ]
    return _exact_list(pred, exact)


def _associated(pred: str, md: dict[str, Any], most: bool) -> Score:
    if _absent(pred, md["answer"]):
        return 0, 1
    i = md["answer_index"]
    options = md["distractors"][:i] + [md["answer"]] + md["distractors"][i:]
    ans, cat = word_rx(md["answer"]), word_rx(md["category"])
    if most:
        for rx in (ans, rf"{cat} - {ans}"):
            s, c = simple_score(pred, rx)
            if s:
                return s, c
    else:
        s, c = simple_score(pred, ans)
        if s:
            return s, c
    words = rf"(of|from) ({words_rx(options)}|the (words|options) (above|given|listed|following)|the (above|given|listed|following) (words|options))"
    to_, is_ = r"(to|with)", r"(is|are)"
    rel = r"most( commonly)? (associated|related)" if most else r"least( commonly)? (associated|related)"
    the_most = "the most" if most else "the least"
    base = [
        rf"The word {rel} {to_} {cat} is {ans}",
        rf"The word {rel} {to_} {cat} {words} is {ans}",
        rf"{cat} {is_} {rel} {to_} {ans}",
        rf"{ans} {is_} the {rel} {to_} {cat}",
        rf"{ans} {is_} the word {rel} {to_} {cat}",
        rf"The word that relates to {cat} {the_most} is {ans}",
        rf"{ans} relates to {cat} {the_most}",
    ]
    base += [swap(s, ans, cat) for s in base]
    return phrasing_score(pred, base + answer_phrasings(ans), ["", rf"{words}{_NW}*"], ["", rf"{_NW}*{words}"])


def most_associated_word(pred: str, md: dict[str, Any]) -> Score:
    return _associated(pred, md, True)


def least_associated_word(pred: str, md: dict[str, Any]) -> Score:
    return _associated(pred, md, False)


_DIFF_NUMBER = r"(?P<number>\d+|one|two|three|four|five|six|seven|eight|nine|ten|zero|a single)"


def _letters_task(pred: str, md: dict[str, Any], more: bool) -> Score:
    ans, dis = word_rx(md["answer"]), word_rx(md["distractor"])
    n = len(md["answer"]) - len(md["distractor"]) if more else len(md["distractor"]) - len(md["answer"])
    diff = number_forms_rx(n)
    cmp_, adj = ("more", "longer") if more else (r"(less|fewer)", "shorter")
    opp_cmp, opp_adj = (r"(less|fewer)", "shorter") if more else ("more", "longer")

    def claims(x: str, y: str, with_bare_by: bool) -> list[str]:
        out = [
            rf"{x} has {cmp_} letters",
            rf"{x} has {cmp_} letters than {y}",
            rf"{x} has {diff} {cmp_} letter(s)?",
            rf"{x} has {diff} {cmp_} letter(s)? than {y}",
            rf"The word that has {cmp_} letters is {x}",
            rf"{x} is the word that has {cmp_} letters",
            rf"{x} is {adj}",
        ]
        if with_bare_by:
            out.append(rf"{x} is {adj} by {diff} letter(s)?")
        return out + [
            rf"{x} is {adj} than {y}",
            rf"{x} is {adj} than {y} by {diff} letter(s)?",
            rf"The {adj} word is {x}",
            rf"The word that is {adj} is {x}",
            rf"{x} is the word that is {adj}",
        ]

    for rx in [dis, *claims(dis, ans, True)]:
        if re.match(rf"{normalize(rx)}\.?$", pred):
            return 0, 1
    wrong_diff = [
        rf"{ans} has {_DIFF_NUMBER} {cmp_} letter(s)?",
        rf"{ans} has {_DIFF_NUMBER} {cmp_} letter(s)? than {dis}",
        rf"{ans} is {adj} by {_DIFF_NUMBER} letter(s)?",
        rf"{ans} is {adj} than {dis} by {_DIFF_NUMBER} letter(s)?",
    ]
    for rx in wrong_diff:  # right word, wrong difference (matched without lower-casing the pattern, as upstream)
        m = re.match(rx, pred)
        if m and not re.match(diff, m.group("number")):
            return 0, 1

    def patterns() -> list[str]:
        base = claims(ans, dis, False)
        cmp_lit = cmp_
        base += [swap(s, ans, dis).replace(cmp_lit, opp_cmp) for s in base if cmp_lit in s]
        base += [swap(s, ans, dis).replace(adj, opp_adj) for s in base if adj in s]
        return base + answer_phrasings(ans)

    w1, w2 = word_rx(md["word1"]), word_rx(md["word2"])
    return _simple_then(pred, ans, patterns, ["", f"Of the words {w1} and {w2}, ", f"From the words {w1} and {w2}, "])


def more_letters(pred: str, md: dict[str, Any]) -> Score:
    return _letters_task(pred, md, True)


def less_letters(pred: str, md: dict[str, Any]) -> Score:
    return _letters_task(pred, md, False)


def sentence_containing(pred: str, md: dict[str, Any]) -> Score:
    w = md["word"].lower()
    return (1, 1) if re.search(sentence_rx(rf"((.*\b{w}\b.+)|(.+\b{w}\b.*))"), pred) else (0, 1)


def sentence_not_containing(pred: str, md: dict[str, Any]) -> Score:
    w = md["word"].lower()
    if re.search(rf"\b{w}\b", pred):
        return 0, 1
    n = len(re.findall(r"\b[a-z]+\b", pred))
    if n == 0:
        return 0, 1
    if n == 1:  # one word is not counted as a sentence (uncertain)
        return 0, 0
    return (1, 0) if w in pred else (1, 1)


def word_containing(pred: str, md: dict[str, Any]) -> Score:
    letter = md["letter"]
    body = rf"\w*{letter}\w*" if letter in {"a", "i"} else rf"((\w+{letter}\w*)|(\w*{letter}\w+)|({letter}-\w+))"
    word = word_rx(body)
    let = letter_rx(letter)
    return _simple_then(pred, word, lambda: [rf"{word} (is a word (that|which) )?(contains|uses|has) {let}", *answer_phrasings(word)])


def word_not_containing(pred: str, md: dict[str, Any], input_: str) -> Score:
    letter = md["letter"]
    echo = normalize(input_).replace(f'"{letter}"', r'"\w"')
    try:
        echoed = re.match(echo + "$", pred) is not None
    except re.error:
        echoed = False
    if echoed or (not re.search(r"\W", pred) and letter in pred):
        return 0, 1
    allowed = string.ascii_lowercase.replace(letter, "")
    body = rf"(\b[{allowed}]{{2,}}\b)"
    if letter != "a":
        body += r"|(a)"
    if letter != "i":
        body += r"|(i)"
    word = word_rx(f"({body})")
    let = letter_rx(letter)
    that, doesnt = r"(that|which)", r"((does not)|(doesn't))"
    contain, containing = r"(contain|use|have)", r"(containing|using|having)"
    patterns = [
        rf"{word} (is a word {that} )?{doesnt} {contain} {let}",
        rf"A word {that} {doesnt} {contain} {let} is {word}",
        rf"A word not {containing} {let} is {word}",
        rf"{word} is a word without {let}",
    ]  # no generic answer phrasings for this task upstream
    return _simple_then(pred, word, lambda: patterns, repetitions=False)


def _word_neighbour(pred: str, md: dict[str, Any], after: bool) -> Score:
    raw_ans, raw_q, raw_s = md["answer"].lower(), md["query"].lower(), md["sentence"].lower()
    if _absent(pred, raw_ans) or re.sub(r"[^\w ]+", "", pred) == raw_s:
        return 0, 1
    ans, q, sent = word_rx(raw_ans), word_rx(raw_q), sentence_rx(raw_s)
    s, c = simple_score(pred, ans)
    if s:
        return s, c
    aft, bef = r"(immediately |right )?after", r"(immediately |right )?before"
    succ, prec, foll = r"(immediately )?succeeds", r"(immediately )?precedes", r"(immediately )?follows"
    if after:
        base = [
            rf"{ans} comes {aft} {q}",
            rf"{ans} is the word that comes {aft} {q}",
            rf"{ans} {succ} {q}",
            rf"{ans} is the word that {succ} {q}",
            rf"{ans} {foll} {q}",
            rf"The word that comes {aft} {q} is {ans}",
            rf"The word that comes {aft} {q} in {sent} is {ans}",
            rf"The word that {succ} {q} is {ans}",
            rf"The word that {foll} {q} is {ans}",
            rf"{q} is succeeded by {ans}",
            rf"{q} is followed by {ans}",
        ]
        base += [swap(s, ans, q).replace(aft, bef) for s in base if aft in s]
        # upstream filters this second family on a word the list never contains, so it adds nothing
        base += [swap(s, ans, q).replace(succ, prec) for s in base if prec in s]
    else:
        base = [
            rf"{ans} comes {bef} {q}",
            rf"{ans} is the word that comes {bef} {q}",
            rf"{ans} {prec} {q}",
            rf"{ans} is the word that {prec} {q}",
            rf"{ans} is followed by {q}",
            rf"The word that comes {bef} {q} is {ans}",
            rf"The word that comes {bef} {q} in {sent} is {ans}",
            rf"The word that {prec} {q} is {ans}",
            rf"The word that {foll} {ans} is {q}",
            rf"{ans} is succeeded by {q}",
            rf"{q} {foll} {ans}",
        ]
        base += [swap(s, ans, q).replace(bef, aft) for s in base if bef in s]
        base += [swap(s, ans, q).replace(prec, succ) for s in base if succ in s]
    return phrasing_score(pred, base + answer_phrasings(ans), ["", f"In {sent} "], ["", f" (of|in) {sent}"])


def word_after(pred: str, md: dict[str, Any]) -> Score:
    return _word_neighbour(pred, md, True)


def word_before(pred: str, md: dict[str, Any]) -> Score:
    return _word_neighbour(pred, md, False)


SCORERS: dict[str, Callable[..., Score]] = {
    f.__name__: f
    for f in (
        sentence_containing, sentence_not_containing, word_containing, word_not_containing, most_associated_word,
        least_associated_word, any_words_from_category, all_words_from_category, first_alphabetically, more_letters,
        less_letters, bigger_number, smaller_number, rhyming_word, homophones, word_after, word_before, starts_with_word,
        ends_with_word, starts_with_letter, ends_with_letter, first_word, last_word, first_letter, last_letter,
    )
}
CORE_TASKS: list[str] = list(SCORERS)


def base_task(task: str) -> str:
    """The core task whose scorer a robustness subset file uses (e.g. ``more_letters_length_diff_1``)."""
    if task in SCORERS:
        return task
    for name in sorted(SCORERS, key=len, reverse=True):
        if task.startswith(name + "_"):
            return name
    raise KeyError(task)


def score(task: str, prediction: str, example: dict[str, Any], *, truncate: bool = False) -> Score:
    """Score one prediction for an LMentry example (``{"input", "metadata"}``) of ``task`` (core or subset)."""
    name = base_task(task)
    pred = normalize_prediction(prediction, truncate)
    if name == "word_not_containing":
        return word_not_containing(pred, example["metadata"], example["input"])
    return SCORERS[name](pred, example["metadata"])
