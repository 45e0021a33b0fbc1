// Argument checks that throw std::invalid_argument naming the parameter and its value.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#include "msrnn/types.hpp"

namespace msrnn::detail {

/// Throws std::invalid_argument("msrnn: <param> = <value>: <rule>").
template <class T>
[[noreturn]] void throw_invalid(const char* param, const T& value, const std::string& rule) {
  std::ostringstream message;
  message << "msrnn: " << param << " = " << value << ": " << rule;
  throw std::invalid_argument(message.str());
}

/// Throws as throw_invalid unless `ok`.
template <class T>
void require(bool ok, const char* param, const T& value, const std::string& rule) {
  if (!ok) throw_invalid(param, value, rule);
}

/// The rule a sequence's length obeys, worded once for the cache's step and the state loader.
inline std::string seen_limit_rule() {
  return "must be at most kMaxPosition (" + std::to_string(kMaxPosition) +
         "), the most tokens a sequence may see";
}

/// "rows x cols" for messages about shapes.
template <class Rows, class Cols>
std::string shape_string(Rows rows, Cols cols) {
  std::ostringstream out;
  out << rows << "x" << cols;
  return out.str();
}

}  // namespace msrnn::detail
