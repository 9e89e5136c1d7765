import apache_beam as beam
import pytest

from tests.helpers import Lazy, peak_bytes
from transforms.normalize import choose_representative, memberships, normalize_text, text_key
from transforms.records import Question


@pytest.mark.parametrize("raw, expected", [
    ("ＡＢＣ１２３", "abc123"),                      # full-width Latin and digits
    ("怎么办？", "怎么办"),                          # full-width question mark
    ("【重要】“问题”《书名》。、", "重要问题书名"),      # CJK punctuation NFKC keeps
    ("Hello,   World", "hello world"),               # case, punctuation, repeated spaces
    ("你 好　世界", "你好世界"),                       # spaces (incl. ideographic) between CJK
    ("iPhone 怎么 截屏", "iphone怎么截屏"),
    ("what's   up\tdoc", "whats up doc"),
    ("\u200b零宽\ufeff字符\u200b", "零宽字符"),       # zero-width and BOM characters
    ("？？！！。。", ""),
    ("   ", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_variants_share_a_key_and_different_texts_do_not():
    variants = ["信用卡怎么提高额度？", "  信用卡怎么提高额度?", "信用卡 怎么提高额度！", "信用卡怎么提高额度"]
    assert len({text_key(normalize_text(v)) for v in variants}) == 1
    assert text_key(normalize_text("信用卡怎么降低额度")) != text_key(normalize_text(variants[0]))


def test_representative_is_lowest_id_and_lists_every_member():
    questions = [Question(7, "问题？", "f#0"), Question(3, "问题", "f#1"), Question(5, "问题!", "f#2")]
    rep = choose_representative("k", questions)
    members = list(memberships(rep, questions))
    assert (rep.id, rep.text, rep.count) == (3, "问题", 3)
    assert sorted(m.id for m in members) == [3, 5, 7]
    assert {m.rep_id for m in members} == {3}


def test_a_text_with_100k_copies_is_collapsed_without_listing_them():
    """The rows of one hot text arrive as a grouped value: they are walked, never listed (a list of
    100k questions alone is ~20 MB)."""
    import collections

    from transforms.joins import Joined
    from transforms.normalize import _Collapse
    copies = 100_000
    grouped = Lazy(lambda: ((0, Question(copies - i, "热门问题", f"f#{i}", "热门问题", i % 7 or None))
                            for i in range(copies)))
    joined = Joined(grouped, {"new": 0, "earlier": 1})

    def collapse():
        kinds = collections.Counter()
        members = set()
        rep = None
        for out in _Collapse(extend=False)(("k", joined)):
            if isinstance(out, beam.pvalue.TaggedOutput):
                kinds[out.tag] += 1
                if out.tag == "members":
                    members.add(out.value.rep_id)
            else:
                rep = out
        return rep, kinds, members

    (rep, kinds, members), peak = peak_bytes(collapse)
    assert peak < 1_000_000, peak
    assert (rep.id, rep.count, rep.key) == (1, copies, "k")
    earliest = min((i % 7, copies - i) for i in range(copies) if i % 7)  # timestamp 1, then the lowest id
    assert (rep.first_time, rep.first_id) == earliest
    assert kinds == {"members": copies, "new": 1} and members == {1}
