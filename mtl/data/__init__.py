"""The data layer: task files -> :class:`Example` lists -> tokenised, cached datasets.

Heavy libraries (``datasets``, ``sklearn``, ``torch``) are imported only by the functions that need them,
so ``import mtl.data`` stays cheap.
"""

from mtl.data.fixtures import write_fixture_data
from mtl.data.loading import (
    TaskData,
    TaskReport,
    collate,
    examples_fingerprint,
    is_multi_label,
    load_task,
    load_test_sets,
    resolve_data_root,
    task_type,
    tokenize_examples,
)
from mtl.data.normalize import tianchi_normalize
from mtl.data.readers import (
    BadRowError,
    DataSourceError,
    Example,
    ReadReport,
    ReadSpec,
    get_reader,
    read_unlabelled_tsv,
    reader_names,
    register_reader,
)
from mtl.data.splits import (
    check_disjoint,
    files,
    id_at_least,
    random_fraction,
    stratified_fraction,
    stratified_subsample,
)

__all__ = [
    "BadRowError",
    "DataSourceError",
    "Example",
    "ReadReport",
    "ReadSpec",
    "TaskData",
    "TaskReport",
    "check_disjoint",
    "collate",
    "examples_fingerprint",
    "files",
    "get_reader",
    "id_at_least",
    "is_multi_label",
    "load_task",
    "load_test_sets",
    "read_unlabelled_tsv",
    "reader_names",
    "register_reader",
    "resolve_data_root",
    "random_fraction",
    "stratified_fraction",
    "stratified_subsample",
    "task_type",
    "tianchi_normalize",
    "tokenize_examples",
    "write_fixture_data",
]
