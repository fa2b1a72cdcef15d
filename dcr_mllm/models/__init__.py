"""lmms-eval plugin: the ``dcr_llava`` model (a llava-hf checkpoint with a tower swapped in memory).

Registered through the ``lmms_eval.models`` entry point (``manifest``), and also found by
lmms-eval's older ``LMMS_EVAL_PLUGINS=dcr_mllm`` mechanism (``AVAILABLE_MODELS``). That mechanism
does not make the tasks known in lmms-eval 0.7.3 (its task index is built before it reads the
variable): pass ``--include_path "$(dcr-mllm eval-task-dir)"`` for them.
"""

AVAILABLE_MODELS = {"dcr_llava": "DcrLlava"}


def manifest():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="dcr_llava",
        simple_class_path="dcr_mllm.models.dcr_llava.DcrLlavaSimple",
        chat_class_path="dcr_mllm.models.dcr_llava.DcrLlava",
    )
