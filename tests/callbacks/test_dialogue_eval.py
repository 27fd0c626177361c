"""When the dialogue evaluation runs."""

from types import SimpleNamespace

from lightning.pytorch.trainer.states import TrainerFn

from callbacks.dialogue_eval import DialogueEvalCallback

FIT = SimpleNamespace(fn=TrainerFn.FITTING)


def test_runs_every_n_epochs_and_after_the_last():
    cb = DialogueEvalCallback(every_n_epochs=3)
    due = [cb._due(SimpleNamespace(sanity_checking=False, current_epoch=e, max_epochs=8, state=FIT)) for e in range(8)]
    assert due == [False, False, True, False, False, True, False, True]  # epochs 3, 6 and the last (8)
    assert not cb._due(SimpleNamespace(sanity_checking=True, current_epoch=2, max_epochs=8, state=FIT))
    assert [cb._due(SimpleNamespace(sanity_checking=False, current_epoch=e, max_epochs=-1, state=FIT)) for e in range(4)] == [False, False, True, False]
    # a standalone validate (no fit around it) always evaluates the dialogue
    for fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
        assert cb._due(SimpleNamespace(sanity_checking=False, current_epoch=0, max_epochs=8, state=SimpleNamespace(fn=fn)))
