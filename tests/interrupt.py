"""Interrupting an in-process run after a given round (for resume tests)."""


class Stop(Exception):
    """Raised from ``on_round`` to stop a run as a kill would."""


def stop_after(n):
    def on_round(rec):
        if rec.round == n:
            raise Stop
    return on_round
