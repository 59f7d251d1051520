"""`streamrec bench NAME`: each benchmark runs its own baseline in the same run and reports
``baseline_*`` figures and a ``ratio``, because these shared machines are too noisy for
absolute numbers."""
