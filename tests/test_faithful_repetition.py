"""The repetition measure a reader would agree with (engine.quality.loops / repeated_share / loop_share):
an answer loops when some run of four words occurs twice or more, whatever the punctuation or case."""
import pytest

from engine import quality as Q

LOOPING = [
    "A sea of light, a sea of light, a sea of light, a sea of light, a sea of light.",
    "The cat was lost. The cat was lost. The cat was lost.",
    "I love you, I love you, I love you",
    "very very very very very",
    "Once upon a time there was a cat. Once upon a time there was a dog.",
]
NOT_LOOPING = [
    "It's also called a because because",                          # broken, but not a loop
    "The cat sat on the mat and looked at the dog, who did not care.",
    "Lost cat: the cat was lost. Then the cat was found.",          # a 3-word repeat only
    "",
]


@pytest.mark.parametrize("text", LOOPING)
def test_loops_are_found(text):
    assert Q.loops(text)
    assert Q.repeated_share(text) > 0


@pytest.mark.parametrize("text", NOT_LOOPING)
def test_ordinary_or_broken_text_is_not_a_loop(text):
    assert not Q.loops(text)
    assert Q.repeated_share(text) == 0.0


def test_a_parallel_sentence_counts_as_a_mild_loop():
    """The limit of the definition: four words repeated in parallel sentences count, with a low share."""
    text = "Paris is the capital of France. Berlin is the capital of Germany."
    assert Q.loops(text) and Q.repeated_share(text) < 0.7


def test_words_ignore_case_punctuation_and_spacing():
    assert Q.words("A sea  of light,\nA SEA of... light!") == ["a", "sea", "of", "light", "a", "sea", "of", "light"]
    assert Q.words("it's don't") == ["it's", "don't"]


def test_repeated_share_and_loop_share():
    assert Q.repeated_share("a b c d a b c d") == 1.0
    assert Q.repeated_share("x y a b c d z a b c d") == pytest.approx(8 / 11)
    assert Q.loop_share(LOOPING[:2] + NOT_LOOPING[:2]) == 0.5
    assert Q.loop_share([]) is None
    assert not Q.loops("a b c a b c", n=4) and Q.loops("a b c a b c", n=3)
