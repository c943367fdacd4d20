"""Readable class names for data whose class folders are ImageNet WordNet ids.

Imagenette and Imagewoof name their class folders by WordNet id (n01440764, ...), which says
nothing in a confusion matrix or a prediction. The folders stay what is on disk and fix the class
order (sorted ids, so label numbers do not change); only the names a run shows and stores do.
"""

from __future__ import annotations

# The twenty classes of Imagenette and Imagewoof, by their ImageNet synset names.
WORDNET_NAMES: dict[str, str] = {
    # Imagenette
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888257": "parachute",
    # Imagewoof
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


def readable(classes: list[str]) -> list[str]:
    """The classes with WordNet ids replaced by names, when every class is a known id.

    A mix (some folders ids, some not) is left alone: renaming part of a user's own labels
    would be a surprise, and a name could then collide with one of theirs.
    """
    if classes and all(c in WORDNET_NAMES for c in classes):
        return [WORDNET_NAMES[c] for c in classes]
    return list(classes)


def same_classes(a: list[str], b: list[str]) -> bool:
    """True when two class lists are the same labels in the same order, ids or names alike.

    Runs trained before the names were introduced store the ids; they still match the data.
    """
    return readable(list(a)) == readable(list(b))
