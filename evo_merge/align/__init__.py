"""Alignment of models trained from different initialisations.

Permutation specs (`spec`, `builders`), matchers (`matching`: weight, activation, MuDSC;
`c2m3`: cycle-consistent N-model matching; `zipping`: ZipIt-style merge), REPAIR (`repair`) and
the library entry point `api.align_models`.
"""
