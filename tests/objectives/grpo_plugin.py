"""A user reward file (loaded by path, not imported as a package) for the GRPO process tests."""


def diversity(completions, completion_ids, **kwargs):
    """Distinct tokens / tokens: rewards spread within every group on the 2-layer debug model."""
    return [len(set(ids)) / len(ids) for ids in completion_ids]
