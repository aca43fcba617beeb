/* onvm_hooks.h - the files of the hooks module, onvm._hooks: test and benchmark
 * entry points of the native core, which the package never imports at run time.
 * They reach the core only through the table onvm._native lends (onvm_capi.h),
 * so both work on the same code and the same objects. */
#ifndef ONVM_HOOKS_H
#define ONVM_HOOKS_H

#include "onvm_nf.h" /* first: PY_SSIZE_T_CLEAN before Python.h */
#include "onvm_capi.h"

extern const struct onvm_capi *onvm_core; /* hooks.c, set when the module loads */

int onvm_harness_register(PyObject *module);   /* harness.c */
int onvm_hookbench_register(PyObject *module); /* hookbench.c */
int onvm_bpstress_register(PyObject *module);  /* bpstress.c */
int onvm_poolrace_register(PyObject *module);  /* poolrace.c */

#endif
