/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* containerd's snapshots.v1 service on the store (the containerd door, served by grpc.c). */
#pragma once

#include <stddef.h>

#include "grpc.h"
#include "rpc.h"

/* The service's methods over srv's store; requests past max_message bytes are refused. */
void snapshots_service(rpc_server *srv, size_t max_message, grpc_service *ret);
