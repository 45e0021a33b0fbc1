// msrnn: a decoder-only transformer's KV cache as a bounded multi-state RNN.
// Umbrella header: includes the public headers, nothing else.
#pragma once

#include "msrnn/attention.hpp"
#include "msrnn/cache.hpp"
#include "msrnn/fork_join.hpp"
#include "msrnn/in_cache_keys.hpp"
#include "msrnn/kernels.hpp"
#include "msrnn/kv_store.hpp"
#include "msrnn/kv_type.hpp"
#include "msrnn/policies/full.hpp"
#include "msrnn/policies/h2o.hpp"
#include "msrnn/policies/tova.hpp"
#include "msrnn/policies/tova_sinks.hpp"
#include "msrnn/policies/window.hpp"
#include "msrnn/policies/window_plus_i.hpp"
#include "msrnn/policy.hpp"
#include "msrnn/policy_options.hpp"
#include "msrnn/positions.hpp"
#include "msrnn/rope.hpp"
#include "msrnn/slot_table.hpp"
#include "msrnn/types.hpp"
