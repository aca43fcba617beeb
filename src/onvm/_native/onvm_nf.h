/* onvm_nf.h - Python object layouts shared by module.c and nfloop.c. */
#ifndef ONVM_NF_H
#define ONVM_NF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "onvm_route.h"

typedef struct {
    PyObject_HEAD struct onvm_region r;
    PyObject *path;
} RegionObject;

extern PyTypeObject RegionType;
extern PyTypeObject NFContextType;
extern PyTypeObject PacketType;
extern PyTypeObject MetaType;
extern PyTypeObject HeaderType;
extern PyObject *onvm_RegionError;

#endif
