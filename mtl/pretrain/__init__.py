"""Domain-adaptive masked-language-model pretraining on the task texts (``mtl-pretrain``; docs/pretraining.md).

* :mod:`mtl.pretrain.corpus`: the texts of the tasks' train files (dev rows left out) and test files, read and
  normalised as training reads them, de-duplicated;
* :mod:`mtl.pretrain.mlm`: the masked-LM model of an encoder (a fresh, tied head where it has none), masking
  and the loss;
* :mod:`mtl.pretrain.run`: one run into a Hugging Face folder with ``pretrain_record.json``, resumable;
* :mod:`mtl.pretrain.settings`: the ``pretrain`` config group.
"""
