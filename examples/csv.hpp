// CSV files of the tools and benchmarks: one header, one row per record, written through
// AtomicOutput (output_file.hpp), so a failed run leaves an earlier file as it was.
#pragma once

#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "output_file.hpp"

namespace engine {

/// Writes `path` as CSV: the columns given, then `row(...)` per record, then `commit()`.
///
///   CsvWriter csv(path, {"policy", "capacity", "ppl"});
///   csv.row("tova", 64, 7.308);
///   csv.commit();  // throws FileError if a write failed
///
/// Text fields are quoted when they hold a comma, a quote or a line break; floating-point fields
/// have 10 significant digits.
class CsvWriter {
 public:
  CsvWriter(const std::string& path, std::initializer_list<std::string_view> columns) : out_(path) {
    std::string line;
    for (std::string_view column : columns) {
      if (!line.empty()) line += ',';
      line += column;
    }
    put_line(line);
    columns_ = columns.size();
  }

  template <class... Fields>
  void row(const Fields&... fields) {
    static_assert(sizeof...(Fields) > 0, "a row has fields");
    std::string line;
    (append(line, fields), ...);
    line.pop_back();  // the last comma
    put_line(line);
  }

  /// Renames the finished file into place (AtomicOutput::commit).
  void commit() { out_.commit(); }
  /// The file (to commit with others: commit_all).
  AtomicOutput& output() { return out_; }

  std::size_t columns() const { return columns_; }

 private:
  static void append(std::string& line, std::string_view text) {
    if (text.find_first_of(",\"\r\n") == std::string_view::npos) {
      line += text;
    } else {
      line += '"';
      for (char c : text) line += c == '"' ? std::string("\"\"") : std::string(1, c);
      line += '"';
    }
    line += ',';
  }
  static void append(std::string& line, const std::string& text) {
    append(line, std::string_view(text));
  }
  static void append(std::string& line, const char* text) { append(line, std::string_view(text)); }
  template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
  static void append(std::string& line, T value) {
    if constexpr (std::is_floating_point_v<T>) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.10g", static_cast<double>(value));
      line += text;
    } else {
      line += std::to_string(value);
    }
    line += ',';
  }

  void put_line(const std::string& line) {
    std::fputs(line.c_str(), out_.file());
    std::fputc('\n', out_.file());
  }

  AtomicOutput out_;
  std::size_t columns_ = 0;
};

}  // namespace engine
