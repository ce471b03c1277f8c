/*
 * fws._speedups: the per-message framing of fws's fast paths, compiled.
 *
 * On the echo path (one small message in, one out) the Python versions of
 * these two functions were a third of the server's time: a byte-by-byte
 * header parse, an XOR through two big ints, a UTF-8 decode that builds a
 * str only to throw it away, and two bytes objects per outgoing frame.
 * Here each is one pass over the payload and one allocation.
 *
 * fws/_wire/framing.py holds the Python versions, which define the behaviour:
 * tests/test_framing.py checks that both agree on every input it can think
 * of, and fws uses these only when the module built (FWS_PURE_PYTHON=1
 * forces the Python ones).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define ASCII_MASK UINT64_C(0x8080808080808080)

/* XOR n bytes of src with the 4-byte key into dst; return whether every
 * output byte is ASCII (so that a text payload needs no UTF-8 decode). */
static int
unmask_into(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
            const unsigned char *key)
{
    unsigned char key8[8];
    uint64_t k, w, high = 0;
    Py_ssize_t i = 0;

    memcpy(key8, key, 4);
    memcpy(key8 + 4, key, 4);
    memcpy(&k, key8, 8);
    for (; i + 8 <= n; i += 8) {
        memcpy(&w, src + i, 8);
        w ^= k;
        high |= w;
        memcpy(dst + i, &w, 8);
    }
    for (; i < n; i++) {
        unsigned char c = src[i] ^ key[i & 3];
        high |= c;
        dst[i] = c;
    }
    return (high & ASCII_MASK) == 0;
}

PyDoc_STRVAR(parse_frames_doc,
"parse_frames(data, limit) -> (frames, consumed)\n\n"
"The complete, unfragmented, masked text and binary frames at the start of\n"
"data whose payload is at most limit bytes: a list of (payload, is_binary)\n"
"and how many bytes of data they took. Parsing stops at anything else (a\n"
"control frame, a fragment, RSV bits, an unmasked or 64-bit-length frame, a\n"
"16-bit length under 126 (not minimal), an incomplete or too large frame,\n"
"text that is not UTF-8), which is left for\n"
"Autobahn's parser. See fws._wire.framing.py_parse_frames.");

static PyObject *
parse_frames(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t limit, pos = 0;
    PyObject *frames, *result, *consumed;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_frames(data, limit) takes 2 arguments");
        return NULL;
    }
    limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    frames = PyList_New(0);
    if (frames == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    {
        const unsigned char *data = view.buf;
        Py_ssize_t n = view.len;

        while (n - pos >= 6) {
            unsigned char b0 = data[pos], b1 = data[pos + 1];
            Py_ssize_t length, start, end;
            PyObject *payload, *item;
            int ascii;

            if ((b0 != 0x81 && b0 != 0x82) || b1 < 0x80)
                break;
            length = b1 & 0x7F;
            start = pos + 6;
            if (length == 126) {
                if (n - pos < 8)
                    break;
                length = ((Py_ssize_t)data[pos + 2] << 8) | data[pos + 3];
                if (length < 126)
                    break;  /* not the minimal encoding: Autobahn fails it with 1002 */
                start = pos + 8;
            }
            else if (length == 127)
                break;
            end = start + length;
            if (end > n || length > limit)
                break;
            payload = PyBytes_FromStringAndSize(NULL, length);
            if (payload == NULL)
                goto error;
            ascii = unmask_into((unsigned char *)PyBytes_AS_STRING(payload),
                                data + start, length, data + start - 4);
            if (b0 == 0x81 && !ascii) {
                PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), length,
                                                      "strict");
                if (text == NULL) {
                    Py_DECREF(payload);
                    if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                        goto error;
                    PyErr_Clear();
                    break;  /* Autobahn fails the connection with 1007 */
                }
                Py_DECREF(text);
            }
            item = PyTuple_New(2);
            if (item == NULL) {
                Py_DECREF(payload);
                goto error;
            }
            PyTuple_SET_ITEM(item, 0, payload);
            PyTuple_SET_ITEM(item, 1, Py_NewRef(b0 == 0x82 ? Py_True : Py_False));
            if (PyList_Append(frames, item) < 0) {
                Py_DECREF(item);
                goto error;
            }
            Py_DECREF(item);
            pos = end;
        }
    }
    PyBuffer_Release(&view);
    result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(frames);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, frames);
    consumed = PyLong_FromSsize_t(pos);
    if (consumed == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 1, consumed);
    return result;

error:
    PyBuffer_Release(&view);
    Py_DECREF(frames);
    return NULL;
}

PyDoc_STRVAR(encode_frame_doc,
"encode_frame(payload, is_binary) -> bytes\n\n"
"One complete, unmasked, uncompressed server frame (RFC 6455 section 5.2).\n"
"See fws._wire.framing.py_encode_frame.");

static PyObject *
encode_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    int binary;
    Py_ssize_t n, header;
    PyObject *frame;
    unsigned char *out;
    unsigned char first;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "encode_frame(payload, is_binary) takes 2 arguments");
        return NULL;
    }
    binary = PyObject_IsTrue(args[1]);
    if (binary < 0)
        return NULL;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    n = view.len;
    first = binary ? 0x82 : 0x81;
    header = n < 126 ? 2 : (n < 65536 ? 4 : 10);
    frame = PyBytes_FromStringAndSize(NULL, header + n);
    if (frame == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    out = (unsigned char *)PyBytes_AS_STRING(frame);
    out[0] = first;
    if (header == 2)
        out[1] = (unsigned char)n;
    else if (header == 4) {
        out[1] = 126;
        out[2] = (unsigned char)(n >> 8);
        out[3] = (unsigned char)n;
    }
    else {
        uint64_t len = (uint64_t)n;
        int i;
        out[1] = 127;
        for (i = 0; i < 8; i++)
            out[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    }
    memcpy(out + header, view.buf, n);
    PyBuffer_Release(&view);
    return frame;
}

static PyMethodDef methods[] = {
    {"parse_frames", (PyCFunction)(void (*)(void))parse_frames, METH_FASTCALL, parse_frames_doc},
    {"encode_frame", (PyCFunction)(void (*)(void))encode_frame, METH_FASTCALL, encode_frame_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "fws._speedups",
    "RFC 6455 framing for fws's fast paths, compiled (see fws._wire.framing).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
