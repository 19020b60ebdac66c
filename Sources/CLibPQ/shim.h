#ifndef LOCALITY_CLIBPQ_SHIM_H
#define LOCALITY_CLIBPQ_SHIM_H
#include <libpq-fe.h>
// The I/O loop (PGIOLoop.swift) multiplexes connection sockets with epoll and is woken with an eventfd;
// Swift's Glibc module does not include these headers.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
