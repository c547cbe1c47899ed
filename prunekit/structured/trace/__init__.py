"""Tracing: record one forward (``capture``), propagate channel identities through it
(``propagate``, ``slots``) and collect the coupled channels into groups (``groups``);
``examples`` (several inputs) and ``explain`` (why a group is frozen) live here too."""
