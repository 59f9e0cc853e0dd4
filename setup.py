"""Build the Cython extensions in src/fastml/_cext/.

OpenMP is used when the compiler supports ``-fopenmp`` (gcc, clang with
libomp); otherwise the extensions build without it and run serially.
Set ``FASTML_CYTHON_DEBUG=1`` to compile with bounds and wraparound checks
on, at -O1 (a CI-style safety net: an out-of-bounds index then raises
IndexError instead of reading garbage). The extensions compile in parallel,
one per core.
"""
import glob
import os
import shutil
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _fail(msg):
    sys.stderr.write(f"\nfastml build error: {msg}\n\n")
    raise SystemExit(1)


def _compiler_supports(compiler, flags, link_flags):
    """Compile and link a tiny OpenMP program with ``compiler``."""
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "omp_probe.c")
    with open(src, "w") as f:
        f.write(textwrap.dedent("""
            #include <omp.h>
            int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
        """))
    try:
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, os.path.join(tmp, "omp_probe"),
                                 extra_postargs=link_flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that checks for a C compiler and probes OpenMP once."""

    def finalize_options(self):
        super().finalize_options()
        # The extensions compile independently: one per core by default (pip gives no
        # way to pass -j); an explicit --parallel / -j still wins.
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        cc = self.compiler
        exe = getattr(cc, "compiler_so", None) or getattr(cc, "compiler", None)
        if exe and shutil.which(exe[0]) is None:
            _fail(f"no C compiler found (looked for {exe[0]!r}). fastml's Cython "
                  "backend needs one: install gcc or clang (e.g. "
                  "'apt-get install build-essential') and retry.")
        if self.compiler.compiler_type == "msvc":
            omp_c, omp_l = ["/openmp"], []
        else:
            omp_c, omp_l = ["-fopenmp"], ["-fopenmp"]
        use_omp = os.environ.get("FASTML_NO_OPENMP", "") != "1" and \
            _compiler_supports(cc, omp_c, omp_l)
        if not use_omp:
            sys.stderr.write("fastml: building without OpenMP (kernels run serially)\n")
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + (omp_c if use_omp else [])
            ext.extra_link_args = list(ext.extra_link_args or []) + (omp_l if use_omp else [])
        super().build_extensions()


def extensions():
    try:
        import numpy
        from Cython.Build import cythonize
    except ImportError as exc:  # build isolation installs both
        _fail(f"building fastml needs Cython>=3 and numpy>=2 ({exc})")
    debug = os.environ.get("FASTML_CYTHON_DEBUG", "") == "1"
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "nonecheck": False,
        "embedsignature": True,
    }
    # -fno-trapping-math lets gcc turn the NaN/overflow selects of the exp kernels into
    # vector blends, and -fno-math-errno lets sqrt vectorize (no errno branch); neither
    # assumes anything about finiteness (NaN and inf still propagate).
    # The debug build exists to catch indexing bugs, not to run fast: -O1 builds it in
    # two thirds of -O3's time.
    compile_args = ([f"-O{1 if debug else 3}", "-fno-trapping-math", "-fno-math-errno"]
                    if sys.platform != "win32" else ["/O2"])
    cext = os.path.join("src", "fastml", "_cext")
    # The vector loops in _kernels*.h (included by the generated C): their folder is on
    # the include path, and listing them as depends rebuilds on change and ships them
    # in the sdist.
    headers = sorted(glob.glob(os.path.join(cext, "*.h")))
    exts = [
        Extension(
            "fastml._cext." + os.path.splitext(os.path.basename(pyx))[0],
            [pyx],
            include_dirs=[numpy.get_include(), cext],
            depends=headers,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=compile_args,
        )
        for pyx in sorted(glob.glob(os.path.join(cext, "*.pyx")))
    ]
    # cythonize does not notice a change of directives: regenerate the C whenever the
    # debug switch differs from the one the existing C files were generated with.
    stamp = os.path.join(cext, ".cython-debug")
    previous = open(stamp).read() if os.path.exists(stamp) else None
    force = previous != str(debug)
    with open(stamp, "w") as f:
        f.write(str(debug))
    return cythonize(exts, compiler_directives=directives, include_path=[cext], force=force)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
