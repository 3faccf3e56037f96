"""Compress stage: OmniSIFT's STVP (video pruning) and VGAS (vision-guided audio selection) with
one deterministic top-k, as a whole-sequence mask (training, migration) and a static per-chunk
module (inference, export)."""
