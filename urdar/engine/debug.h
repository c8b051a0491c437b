/* URDAR_DEBUG build switch (like PG_DEBUG in asyncpg): invariant checks compiled in
 * only when setup.py runs with URDAR_DEBUG=1. */
#ifndef URDAR_DEBUG_H
#define URDAR_DEBUG_H
#ifndef URDAR_DEBUG
#define URDAR_DEBUG 0
#endif
#endif
