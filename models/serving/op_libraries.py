"""The op libraries a model needs, imported before it loads.

TensorFlow registers the ops of a package's shared library (tf.load_op_library) only once that
package is imported: a process that never imports tensorflow_text cannot load a model whose graph
uses NormalizeUTF8 ("Op type not registered"), installed or not. import_for_model(version_dir)
reads the op types of the model's graph (models.serving.graph_ops), imports the package of each
one this TensorFlow does not register yet (OP_LIBRARIES: tensorflow-text, YDF's ydf-tf,
TF Decision Forests, tensorflow-io), looks again, and raises OpLibraryError naming the ops still
missing, the package that provides them and its pip line, or, for ops no known package provides,
--op_library MODULE. import_modules imports those --op_library modules (a user's own package that
calls tf.load_op_library) before any model loads; worker_requirements is the pip lines a Dataflow
worker must install for a job's models.

The op names are those the packages register (read from the installed tensorflow-text 2.21.1 and
ydf-tf 2.21.0.post1, and from the shared libraries of the tensorflow-decision-forests 1.12.0 and
tensorflow-io 0.37.1 wheels); a prefix stands for a package's namespaced ops ("TFText>...").
"""

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import re
import threading
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from models.serving.contract import serving_meta_graph
from models.serving.graph_ops import graph_op_names, non_core_ops, unregistered_ops


class OpLibraryError(ValueError):
    """Ops a model uses that no imported package registers; says what to install or import."""


@dataclasses.dataclass(frozen=True)
class OpLibrary:
    module: str  # what is imported
    pip: str  # the distribution that installs it
    tested: str  # the version this project tests with TensorFlow 2.21 ('': none installs with it)
    names: FrozenSet[str] = dataclasses.field(default=frozenset(), repr=False)
    prefixes: Tuple[str, ...] = ()
    note: str = ""  # said after its pip line
    lazy: str = ""  # an attribute of the module whose first use loads the ops (they are not loaded on import)

    def provides(self, op: str) -> bool:
        return op in self.names or op.startswith(self.prefixes)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> Optional[str]:
        """The installed distribution's version, or None."""
        try:
            return importlib.metadata.version(self.pip)
        except importlib.metadata.PackageNotFoundError:
            return None

    def requirement(self) -> str:
        """'tensorflow-text==2.21.1': the installed version, else the tested one, else the bare name."""
        version = self.version() or self.tested
        return f"{self.pip}=={version}" if version else self.pip


_TF_TEXT_OPS = frozenset("""
    CaseFoldUTF8 ConstrainedSequence FastBertNormalize FastWordpieceTokenizeWithOffsets FindSourceOffsets
    MaxSpanningTree NormalizeUTF8 NormalizeUTF8WithOffsetsMap PhraseTokenize RegexSplitWithOffsets RougeL
    SentenceFragments SentenceFragmentsV2 SentencepieceDetokenizeOp SentencepieceIdToStringOp SentencepieceOp
    SentencepieceStringToIdOp SentencepieceTokenizeOp SentencepieceTokenizeWithOffsetsOp SentencepieceVocabSizeOp
    SplitMergeTokenizeWithOffsets TokenizerFromLogits UnicodeScriptTokenizeWithOffsets
    WhitespaceTokenizeWithOffsets WordpieceTokenizeWithOffsets""".split())
# YDF's inference ops: what a YDF or TF-DF model exported to a SavedModel runs
_SIMPLE_ML_INFERENCE_OPS = frozenset("""
    SimpleMLCreateModelResource SimpleMLInferenceLeafIndexOpWithHandle SimpleMLInferenceOp
    SimpleMLInferenceOpWithHandle SimpleMLLoadModelFromPath SimpleMLLoadModelFromPathWithHandle""".split())
_SIMPLE_ML_TRAINING_OPS = frozenset("""
    SimpleMLCategoricalIntFeature SimpleMLCategoricalIntFeatureOnFile SimpleMLCategoricalSetIntFeature
    SimpleMLCategoricalSetStringFeature SimpleMLCategoricalStringFeature SimpleMLCategoricalStringFeatureOnFile
    SimpleMLCheckStatus SimpleMLCheckTrainingConfiguration SimpleMLChiefFinalizeFeatureOnFile
    SimpleMLCreateYDFGRPCWorker SimpleMLFileModelLoader SimpleMLHashFeature SimpleMLModelTrainer
    SimpleMLModelTrainerOnFile SimpleMLNumericalFeature SimpleMLNumericalFeatureOnFile SimpleMLShowModel
    SimpleMLStopYDFGRPCWorker SimpleMLUnloadModel SimpleMLUpdateGRPCWorkerAddress
    SimpleMLWorkerFinalizeFeatureOnFile""".split())

# In order of preference: an op is imported from the first installed library that provides it.
OP_LIBRARIES: Tuple[OpLibrary, ...] = (
    OpLibrary("tensorflow_text", "tensorflow-text", "2.21.1", _TF_TEXT_OPS, ("TFText>",)),
    OpLibrary("ydf_tf", "ydf-tf", "2.21.0.post1", _SIMPLE_ML_INFERENCE_OPS),
    OpLibrary("tensorflow_decision_forests", "tensorflow-decision-forests", "",
              _SIMPLE_ML_INFERENCE_OPS | _SIMPLE_ML_TRAINING_OPS,
              note="(its 1.12.0 needs tensorflow==2.19.0; ydf-tf serves a TF-DF model's inference ops on "
                   "TensorFlow 2.21)"),
    OpLibrary("tensorflow_io", "tensorflow-io", "", prefixes=("IO>",), lazy="python.ops.core_ops",
              note="(its 0.37.1 supports TensorFlow 2.16; install the one matching your TensorFlow)"),
)

_READY: Set[str] = set()  # models whose ops are all registered in this process
_LOCK = threading.Lock()


def providers(op: str) -> List[OpLibrary]:
    """The libraries that provide op, installed ones first (each in table order)."""
    found = [lib for lib in OP_LIBRARIES if lib.provides(op)]
    return sorted(found, key=lambda lib: not lib.installed())


def libraries_for(op_names: Iterable[str]) -> Tuple[Dict[OpLibrary, List[str]], List[str]]:
    """({library: the ops it is picked for}, ops no known library provides), each list sorted."""
    picked: Dict[OpLibrary, List[str]] = {}
    unknown = []
    for op in sorted(set(op_names)):
        found = providers(op)
        if found:
            picked.setdefault(found[0], []).append(op)
        else:
            unknown.append(op)
    return picked, unknown


def import_library(library: OpLibrary) -> None:
    """Imports library's module (and touches its lazy loader), so its ops are registered."""
    module = importlib.import_module(library.module)
    if library.lazy:
        target = module
        for name in library.lazy.split("."):
            target = getattr(target, name) if hasattr(target, name) else importlib.import_module(
                f"{target.__name__}.{name}")
        dir(target)  # tensorflow-io's LazyLoader loads its library on first use


def import_for_model(export_dir: str) -> Tuple[OpLibrary, ...]:
    """Imports the op libraries the SavedModel at export_dir (a version directory) needs and this
    process has not registered; returns those imported. Raises OpLibraryError for ops still not
    registered after that. A saved_model.pb that cannot be read is left to the loader to report.
    Cheap after the first call for a model (the answer is kept per process)."""
    if export_dir in _READY:
        return ()
    try:
        op_names = graph_op_names(serving_meta_graph(export_dir))
    except Exception:  # pylint: disable=broad-except  # unreadable: the contract check or the loader says why
        return ()
    with _LOCK:
        missing = unregistered_ops(op_names)
        picked, unknown = libraries_for(missing)
        imported, problems = [], []
        for library, ops in picked.items():
            if not library.installed():
                problems.append(_not_installed(library, ops))
                continue
            try:
                import_library(library)
            except Exception as e:  # pylint: disable=broad-except  # an op library built for another TensorFlow, say
                problems.append(f"{', '.join(ops)}: importing {library.module} ({library.pip} "
                                f"{library.version()}) failed: {type(e).__name__}: {e}; it must match "
                                f"TensorFlow {_tensorflow_version()}")
                continue
            imported.append(library)
            still = unregistered_ops(ops)
            if still:
                problems.append(f"{', '.join(still)}: {library.pip} {library.version()} is installed and imported "
                                f"but does not register them; install the version the model was exported with")
        if unknown:
            problems.append(f"{', '.join(unknown)}: no package this project knows provides them; pass "
                            "--op_library MODULE for the module that registers them (tf.load_op_library)")
        if problems:
            raise OpLibraryError("its graph uses ops this TensorFlow does not register:\n    "
                                 + "\n    ".join(problems))
        _READY.add(export_dir)
        return tuple(imported)


def _not_installed(library: OpLibrary, ops: List[str]) -> str:
    shown = ", ".join(ops[:5]) + (f" and {len(ops) - 5} more" if len(ops) > 5 else "")
    return (f"{shown}: from {library.pip}, which is not installed: pip install {library.requirement()}"
            + (f" {library.note}" if library.note else ""))


def _tensorflow_version() -> str:
    import tensorflow as tf

    return tf.__version__


def import_modules(modules: Iterable[str]) -> None:
    """Imports each --op_library module (once; Python keeps it). Raises OpLibraryError for one that
    cannot be imported."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # pylint: disable=broad-except  # any failure of a user's module, named
            raise OpLibraryError(f"--op_library {name}: cannot import it: {type(e).__name__}: {e}") from e


def needed_libraries(export_dir: str) -> List[OpLibrary]:
    """The known libraries whose ops the model's graph uses (registered in this process or not)."""
    picked, _ = libraries_for(non_core_ops(graph_op_names(serving_meta_graph(export_dir))))
    return list(picked)


def worker_requirements(export_dirs: Iterable[str], modules: Sequence[str] = ()) -> List[str]:
    """The pip lines workers need for these models' op libraries ('tensorflow-text==2.21.1', the
    installed versions) and for the index-installed distributions that hold the --op_library
    modules. A module of no distribution, of this project's (the setup file carries it), or of
    one installed from a local path or a VCS (pip's direct_url.json: no index has it), is left to
    the workers' image or setup file."""
    lines = [lib.requirement() for path in export_dirs for lib in needed_libraries(path)]
    distributions = importlib.metadata.packages_distributions() if modules else {}
    own = set(distributions.get(__name__.split(".", 1)[0], []))
    for name in modules:
        for dist in distributions.get(name.split(".")[0], []):
            if dist not in own and importlib.metadata.distribution(dist).read_text("direct_url.json") is None:
                lines.append(f"{dist}=={importlib.metadata.version(dist)}")
    named, unique = set(), []
    for line in lines:  # a distribution once, as first named
        if requirement_name(line) not in named:
            named.add(requirement_name(line))
            unique.append(line)
    return unique


def requirement_name(line: str) -> str:
    """'Tensorflow_Text == 2.21.1  # x' -> 'tensorflow-text' (pip's normalized name); '' for none."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
    return re.sub(r"[-_.]+", "-", name.group(1)).lower() if name else ""
