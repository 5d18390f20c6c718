"""Near-duplicates: candidate pairs by a Hamming range self-join, confirmed by the float cosine of
the items' embeddings, grouped around leaders (so a chain of small edits cannot join two
different pictures), with a rule for which item of a group to keep.
"""
