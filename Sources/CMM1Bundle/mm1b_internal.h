/* Internal declarations shared by the CMM1Bundle sources. */
#ifndef MM1B_INTERNAL_H
#define MM1B_INTERNAL_H

#include "include/mm1bundle.h"

#endif
