"""The two SimZSS variants, the paper's equations and the authors' released code (docs/method.md, "Paper vs
release"), and where each of their three differences lives:

=====================================  ===========================================  ==================================
what                                   ``"paper"``                                  ``"release"``
=====================================  ===========================================  ==================================
text concept (Eq. 1-2)                 ``g(mean of the concept's tokens)``          ``Σ normalize(g(token))``
                                       (``model.text_concepts``)
the patch query of a concept (Eq. 3)   its own text concept                         its id's classifier row
                                       (``loss.concept_queries``)
cross-entropy target (Eq. 9)           the concept's id                             argmax of the detached logits
                                       (``loss.classify_visual_concepts``)
=====================================  ===========================================  ==================================

The variant is a training choice (``python -m training.main --simzss-variant``), not part of the weights: the model
and the loss must use the same one.
"""
VARIANTS = ("paper", "release")


def check_variant(variant: str) -> str:
    """``variant`` when it is one of ``VARIANTS``; ValueError (one line) otherwise."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown SimZSS variant {variant!r}: use one of {', '.join(VARIANTS)} (docs/method.md)")
    return variant
