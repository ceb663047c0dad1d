// Python binding of the 1/8-scale baseline JPEG decoder (jpeg_eighth.h).
//
// decode_eighth(data) -> (array | None, reason): a uint8 array (H, W) or (H, W, 3) equal to
// libjpeg-turbo's output at scale 1/8, or None and the reason it declined, in which case the
// caller decodes with Pillow. The GIL is released while decoding, so decode threads run in
// parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "jpeg_eighth.h"

namespace py = pybind11;

static py::tuple decode_eighth(py::buffer data) {
    py::buffer_info info = data.request();
    if (info.ndim != 1 || info.itemsize != 1 || (info.size > 1 && info.strides[0] != 1))
        throw py::value_error("decode_eighth takes bytes (a contiguous buffer)");
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    const size_t size = static_cast<size_t>(info.size);
    auto* result = new brcd_jpeg::Result();
    {
        py::gil_scoped_release released;
        *result = brcd_jpeg::decode_eighth(bytes, size);
    }
    if (!result->ok) {
        std::string reason = result->reason;
        delete result;
        return py::make_tuple(py::none(), reason);
    }
    py::capsule owner(result, [](void* p) { delete static_cast<brcd_jpeg::Result*>(p); });
    std::vector<py::ssize_t> shape{result->height, result->width};
    if (result->channels == 3) shape.push_back(3);
    py::array_t<uint8_t> array(shape, result->pixels.data(), owner);
    return py::make_tuple(array, std::string());
}

// brcd_cli/data/jpeg_eighth.py refuses a build of another version (a stale build left by an older checkout).
static constexpr int kApiVersion = 1;

PYBIND11_MODULE(_jpeg_cpu, m) {
    m.attr("API_VERSION") = kApiVersion;
    m.doc() = "Baseline JPEG decoded straight to 1/8 scale, exactly as libjpeg-turbo does";
    m.def("decode_eighth", &decode_eighth, py::arg("data"),
          "(uint8 array, '') at 1/8 scale, or (None, reason) when the file is not one this decoder takes");
}
