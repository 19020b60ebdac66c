#ifndef LOCALITY_CLIBPQ_SHIM_H
#define LOCALITY_CLIBPQ_SHIM_H
#include <libpq-fe.h>
#endif
