"""What every stage shares: errors, config dataclasses (the one source of choices and defaults),
the backbone spec, packed codes, input validation, durable writes and the version. No torch.
"""
