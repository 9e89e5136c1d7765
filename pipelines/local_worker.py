"""Run in each worker process of a local multi-process run before it makes its worker: Beam imports this
module as a plugin (`local_runner.pass_settings_to_local_processes` names it), so that the worker lets a
finished stage's bundle processor go a second after its stage, as the launcher's in-process worker does."""
from pipelines.local_runner import release_finished_stages_here

release_finished_stages_here()
