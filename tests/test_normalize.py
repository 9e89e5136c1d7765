import collections
import random

import apache_beam as beam
import pytest

from tests.helpers import dealt_shard, peak_bytes
from transforms.normalize import TextTally, collapse_shard, normalize_text, text_key
from transforms.records import Question, Representative


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
    questions = [Question(7, "问题？", "f#0", "问题"), Question(3, "问题", "f#1", "问题"),
                 Question(5, "问题!", "f#2", "问题")]
    found = _outputs(dealt_shard([("k", q) for q in questions]))
    [rep] = found[None]
    assert (rep.id, rep.text, rep.count, rep.key) == (3, "问题", 3, "k")
    assert sorted(m.id for m in found["members"]) == [3, 5, 7]
    assert {m.rep_id for m in found["members"]} == {3}


def choose_representative(key, questions, preferred=None):
    """A text's representative from its rows alone (`TextTally`), to check a shard's against."""
    tally = TextTally(key, preferred)
    for q in questions:
        tally.add(q)
    return tally.representative()


def _outputs(element, extend=False):
    """collapse_shard's outputs: {tag: [values]} (None for the representatives)."""
    found = collections.defaultdict(list)
    for out in collapse_shard(element, extend):
        if isinstance(out, beam.pvalue.TaggedOutput):
            found[out.tag].append(out.value)
        else:
            found[None].append(out)
    return found


def test_a_shard_of_texts_gives_each_text_the_representative_its_rows_alone_would():
    """Several texts in one shard, in lists, some with an earlier run's representative: each text's
    representative is `choose_representative` of its rows alone (the earlier one's row preferred), or with
    `extend` the earlier one joined by the rows; every row gets one membership."""
    rng = random.Random(7)
    rows = [Question(i, f"问题{i % 9}", f"f#{i}", f"问题{i % 9}", rng.choice([None, 1, 2, 3])) for i in range(500)]
    rng.shuffle(rows)
    keyed = [(f"k{q.id % 9}", q) for q in rows]
    earlier = [Representative(13, "问题4", "问题4", "k4", 40, 0, 99),    # its row 13 is here: preferred
               Representative(9999, "旧问题", "旧问题", "old", 5, None, 9999)]  # no row has its text
    for extend in (False, True):
        found = _outputs(dealt_shard(keyed, earlier, size=64), extend)
        by_key = {rep.key: rep for rep in found[None]}
        for key in {k for k, _ in keyed}:
            mine = [q for k, q in keyed if k == key]
            before = next((rep for rep in earlier if rep.key == key), None)
            if extend and before is not None:
                tally = TextTally(key, earlier=before)
                for q in mine:
                    tally.add(q)
                expected = tally.representative()
                assert (expected.id, expected.count) == (13, 40 + len(mine))
                assert (expected.first_time, expected.first_id) == (0, 99)  # earlier than every new row
            else:
                expected = choose_representative(key, mine, before.id if before else None)
            assert by_key[key] == expected
        assert ("old" in by_key) == extend and (not extend or by_key["old"] == earlier[1])
        assert sorted(m.id for m in found["members"]) == list(range(500))
        assert all(m.rep_id == by_key[m.key].id for m in found["members"])
        assert sorted(rep.key for rep in found["new"]) == sorted(f"k{i}" for i in range(9) if i != 4)
    assert choose_representative("k4", [q for k, q in keyed if k == "k4"]).id == 4  # lowest id without preference


def test_a_text_with_100k_copies_is_collapsed_without_listing_them():
    """The rows of one hot text arrive in one shard's grouped lists: they are walked, never listed (a list of
    100k questions alone is ~20 MB)."""
    copies = 100_000
    element = dealt_shard(lambda: (("k", Question(copies - i, "热门问题", f"f#{i}", "热门问题", i % 7 or None))
                              for i in range(copies)))

    def collapse():
        kinds = collections.Counter()
        members = set()
        rep = None
        for out in collapse_shard(element, False):
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


def test_texts_dealt_over_many_shards_collapse_as_in_one(tmp_path):
    """Through Beam, with shards of 2 texts: the same representatives, memberships, new texts and rejections as
    one shard, with an earlier run's representatives preferred (`--params-from`) or extended."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.util import assert_that, equal_to

    from tests.helpers import RUNNER_ARGS
    from transforms.normalize import NormalizeAndCollapse
    from transforms.records import Columns

    texts = ["问题一？", "问题一", "问题 二", "问题二!", "问题三", "？？", "问题四", "问题五", "问题五。"]
    questions = [Question(i, text, f"f#{i}") for i, text in enumerate(texts)]
    lists = [questions[:4], questions[4:]]
    key = lambda text: text_key(normalize_text(text))  # noqa: E731
    earlier = [Representative(3, "问题二!", "问题二", key("问题二"), 2, None, 3),
               Representative(99, "旧的", "旧的", key("旧的"), 1, None, 99)]
    rep_ids = {0: 0, 1: 0, 2: 3, 3: 3, 4: 4, 6: 6, 7: 7, 8: 7}  # row -> its text's representative
    for extend in (False, True):
        for shard_keys in (2, 1000):
            with beam.Pipeline(options=PipelineOptions(RUNNER_ARGS)) as pipeline:
                collapsed = ((pipeline | "Questions" >> beam.Create(lists),
                              pipeline | "Earlier" >> beam.Create(earlier))
                             | NormalizeAndCollapse(Columns("id", "question"), extend, shard_keys))
                assert_that(collapsed.members | beam.Map(lambda m: (m.id, m.rep_id)),
                            equal_to(list(rep_ids.items())), label="Members")
                counts = {0: 2, 3: 4 if extend else 2, 4: 1, 6: 1, 7: 2, **({99: 1} if extend else {})}
                assert_that(collapsed.representatives | beam.Map(lambda r: (r.id, r.count)),
                            equal_to(list(counts.items())), label="Representatives")
                assert_that(collapsed.new_representatives | beam.Map(lambda r: r.id), equal_to([0, 4, 6, 7]),
                            label="New")
                assert_that(collapsed.rejected | beam.Map(lambda r: (r.source, r.reason)),
                            equal_to([("f#5", "empty_after_normalization")]), label="Rejected")
