// brcd::ChoiceError (cpu_features.h) raised in Python as brcd_cli.kernels._registry.ChoiceError, for every
// extension that reads a BRCD_* choice. That is the error each backend registry raises for a name it does not
// have, so the CLI shows a bad BRCD_SIMD or BRCD_AVX2_STEP as one line, as it shows a bad BRCD_KERNEL_BACKEND.
#pragma once

#include <pybind11/pybind11.h>

#include "cpu_features.h"

namespace brcd {

// Where the kernels package cannot be imported (an extension loaded on its own) the base is ValueError, which
// ChoiceError also is.
inline void register_choice_error(pybind11::module_& m) {
    namespace py = pybind11;
    py::object base = py::reinterpret_borrow<py::object>(PyExc_ValueError);
    try {
        base = py::module_::import("brcd_cli.kernels._registry").attr("ChoiceError");
    } catch (py::error_already_set&) {
    }
    py::register_local_exception<ChoiceError>(m, "ChoiceError", base);
}

}  // namespace brcd
