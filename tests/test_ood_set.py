"""experiments/ood_set.py's fortune parser: attribution and layout removed, prose of 8-40 words kept."""

from conftest import experiment


def _module():
    return experiment("ood_set")


FILE = """A banker is a fellow who lends you his umbrella when the sun is shining
and wants it back the minute it begins to rain.
\t\t-- Mark Twain
%
A horse!  A horse!  My kingdom for a horse!
\t\t-- Wm. Shakespeare, "Richard III"
%
Too short to keep, four.
%
Q:\tHow many surrealists does it take to change a light bulb?
A:\tTwo, one to hold the giraffe and the other to fill the bathtub with brightly colored machine tools.
%
A Tale of Two Cities LITE(tm) -- by Charles Dickens and a few more words here to pass.
%
It is easier to make a saint out of a libertine than out of a prig.
\t\t-- George Santayana
"""


def test_fortunes_keep_prose_and_drop_attribution_dialogue_and_short_ones():
    got = _module().fortunes(FILE)
    assert got == [
        "A banker is a fellow who lends you his umbrella when the sun is shining and wants it back the minute it "
        "begins to rain.",
        "A horse! A horse! My kingdom for a horse!",
        "It is easier to make a saint out of a libertine than out of a prig.",
    ]
