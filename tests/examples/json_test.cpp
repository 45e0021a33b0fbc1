// The JSON writer (examples/json.hpp) read back by a real parser, nlohmann/json: its parse throws
// on invalid JSON and on invalid UTF-8, so a parse that succeeds proves the output well-formed,
// and comparing what it decodes with the input proves nothing was lost or altered.
#include "json.hpp"

#include <gtest/gtest.h>

#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>

namespace engine {
namespace {

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The text a strict JSON reader gets back from json_string(text).
std::string decoded(std::string_view text) {
  const nlohmann::json value = nlohmann::json::parse(json_string(text));
  EXPECT_TRUE(value.is_string()) << value.dump();
  return value.get<std::string>();
}

// nlohmann's dump() validates its UTF-8 strictly (type_error 316 otherwise): an oracle for "is
// this input valid UTF-8" independent of the writer's own decoder.
bool valid_utf8(const std::string& text) {
  try {
    (void)nlohmann::json(text).dump();
    return true;
  } catch (const nlohmann::json::type_error&) {
    return false;
  }
}

TEST(JsonString, QuotesAndBackslashesAreEscapedAndRoundTrip) {
  EXPECT_EQ(json_string("\""), R"("\"")");
  EXPECT_EQ(json_string("\\"), R"("\\")");
  for (const std::string text :
       {"say \"hi\"", "C:\\path\\", "\\\"", "\"\\\"\\", "/ is not special"}) {
    EXPECT_EQ(decoded(text), text) << json_string(text);
  }
}

TEST(JsonString, ControlCharactersUseShortEscapesWhereJsonHasThem) {
  EXPECT_EQ(json_string("\b\f\n\r\t"), R"("\b\f\n\r\t")");
  EXPECT_EQ(json_string(std::string_view("\0", 1)), R"("\u0000")");
  EXPECT_EQ(json_string("\x1f"), R"("\u001f")");
  EXPECT_EQ(json_string("\x7f"), R"("\u007f")");
}

TEST(JsonString, EveryControlCharacterRoundTripsAndNoneIsWrittenRaw) {
  std::string all;
  for (int c = 0x00; c <= 0x1F; ++c) all += static_cast<char>(c);
  all += '\x7f';
  for (char c : all) {
    const std::string one(1, c);
    const std::string written = json_string(one);
    for (char w : written) {
      EXPECT_FALSE(static_cast<unsigned char>(w) < 0x20 || w == '\x7f')
          << "raw control byte in " << written;
    }
    EXPECT_EQ(decoded(one), one) << written;
  }
  EXPECT_EQ(decoded(all), all);
  EXPECT_EQ(decoded(std::string_view("a\nb\0c", 5)), std::string("a\nb\0c", 5));
}

TEST(JsonString, ValidMultiByteUtf8PassesThroughUnchanged) {
  for (const std::string text : {"caf\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80",
                                 "mixed: \xC3\xA9 \xE4\xB8\xAD \xF0\x9F\x98\x80 end"}) {
    EXPECT_EQ(json_string(text), "\"" + text + "\"");
    EXPECT_EQ(decoded(text), text);
  }
}

TEST(JsonString, ValidUtf8AtTheEdgesOfEachRangePassesThrough) {
  // U+0080, U+07FF, U+0800, U+D7FF (below the surrogates), U+E000 (above), U+FFFD, U+FFFF,
  // U+10000, U+10FFFF.
  for (const std::string text :
       {"\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80", "\xED\x9F\xBF", "\xEE\x80\x80", "\xEF\xBF\xBD",
        "\xEF\xBF\xBF", "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF"}) {
    EXPECT_EQ(decoded(text), text) << json_string(text);
  }
}

std::string replacements(int count) {
  std::string out;
  for (int i = 0; i < count; ++i) out += kReplacement;
  return out;
}

TEST(JsonString, StrayContinuationBytesBecomeOneReplacementEach) {
  EXPECT_EQ(decoded("a\x80z"), "a" + kReplacement + "z");
  EXPECT_EQ(decoded("\xBF"), kReplacement);
  EXPECT_EQ(decoded("\x80\x80\x80"), replacements(3));
  // A complete character followed by one continuation too many.
  EXPECT_EQ(decoded("\xC3\xA9\xA9"), "\xC3\xA9" + kReplacement);
}

TEST(JsonString, TruncatedSequenceBecomesOneReplacement) {
  EXPECT_EQ(decoded("\xC3"), kReplacement);
  EXPECT_EQ(decoded("\xE4\xB8"), kReplacement);
  EXPECT_EQ(decoded("\xF0\x9F\x98"), kReplacement);
  EXPECT_EQ(decoded("ab\xE4\xB8x"), "ab" + kReplacement + "x");
  EXPECT_EQ(decoded("\xF0\x9F\x98\xE4\xB8\xAD"), kReplacement + "\xE4\xB8\xAD");
  EXPECT_EQ(decoded("\xC3\xC3\xA9"), kReplacement + "\xC3\xA9");
}

TEST(JsonString, OverlongEncodingsBecomeOneReplacementPerByte) {
  EXPECT_EQ(decoded("\xC0\x80"), replacements(2));  // U+0000 in two bytes
  EXPECT_EQ(decoded("\xC1\xBF"), replacements(2));
  EXPECT_EQ(decoded("\xE0\x80\x80"), replacements(3));
  EXPECT_EQ(decoded("\xE0\x9F\xBF"), replacements(3));  // U+07FF in three bytes
  EXPECT_EQ(decoded("\xF0\x80\x80\x80"), replacements(4));
  EXPECT_EQ(decoded("\xF0\x8F\xBF\xBF"), replacements(4));  // U+FFFF in four bytes
}

TEST(JsonString, SurrogatesBecomeOneReplacementPerByte) {
  EXPECT_EQ(decoded("\xED\xA0\x80"), replacements(3));  // U+D800
  EXPECT_EQ(decoded("\xED\xBF\xBF"), replacements(3));  // U+DFFF
  // A surrogate pair encoded as two three-byte sequences (CESU-8).
  EXPECT_EQ(decoded("x\xED\xA0\xBD\xED\xB8\x80y"), "x" + replacements(6) + "y");
}

TEST(JsonString, BytesAboveF4AndCodePointsAboveMaxBecomeReplacements) {
  for (int byte = 0xF5; byte <= 0xFF; ++byte) {
    const std::string text = {'a', static_cast<char>(byte), 'b'};
    EXPECT_EQ(decoded(text), "a" + kReplacement + "b") << "byte " << byte;
  }
  EXPECT_EQ(decoded("\xF4\x90\x80\x80"), replacements(4));  // U+110000
  EXPECT_EQ(decoded("\xF5\x80\x80\x80"), replacements(4));
}

// Every string of one or two bytes: the output parses, a valid input comes back unchanged, an
// invalid one comes back with U+FFFD in it.
TEST(JsonString, EveryOneAndTwoByteInputParsesAndValidOnesRoundTrip) {
  for (int a = 0; a < 256; ++a) {
    const std::string one(1, static_cast<char>(a));
    EXPECT_EQ(decoded(one), valid_utf8(one) ? one : kReplacement) << "byte " << a;
    for (int b = 0; b < 256; ++b) {
      const std::string two = {static_cast<char>(a), static_cast<char>(b)};
      std::string back;
      ASSERT_NO_THROW(back = decoded(two)) << "bytes " << a << " " << b;
      if (valid_utf8(two)) {
        ASSERT_EQ(back, two) << "bytes " << a << " " << b;
      } else {
        ASSERT_NE(back.find(kReplacement), std::string::npos) << "bytes " << a << " " << b;
      }
    }
  }
}

// Longer random byte strings, drawn mostly from bytes that matter to UTF-8; fixed seed.
TEST(JsonString, RandomByteStringsParseAndValidOnesRoundTrip) {
  static constexpr unsigned char kBytes[] = {'a',  '"',  '\\', 0x00, 0x1F, 0x7F, 0x80, 0x8F,
                                             0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0,
                                             0xE4, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
  std::mt19937 random(20240601);
  int valid = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    std::string text(1 + random() % 8, '\0');
    for (char& c : text) c = static_cast<char>(kBytes[random() % sizeof(kBytes)]);
    std::string back;
    ASSERT_NO_THROW(back = decoded(text)) << json_string(text);
    if (valid_utf8(text)) {
      ++valid;
      ASSERT_EQ(back, text);
    } else {
      ASSERT_NE(back.find(kReplacement), std::string::npos);
    }
  }
  EXPECT_GT(valid, 1000);  // the draw reaches valid multi-byte text, not just garbage
}

TEST(JsonString, EmptyStringIsTwoQuotes) {
  EXPECT_EQ(json_string(""), "\"\"");
  EXPECT_EQ(decoded(""), "");
}

TEST(JsonLine, FourFieldsParseToAnObjectWithTheirValuesAndTypes) {
  const std::string prompt = "Once upon a \"time\"\n";
  const std::string completion = "there was\ta girl \xE4\xB8\xAD\xF0\x9F\x98";  // cut mid-emoji
  JsonLine line;
  line.field("index", 0)
      .field("prompt", prompt)
      .field("completion", completion)
      .field("tokens", 12);
  const std::string text = line.str();
  EXPECT_EQ(text.find('\n'), std::string::npos);

  const nlohmann::json object = nlohmann::json::parse(text);
  ASSERT_TRUE(object.is_object());
  ASSERT_EQ(object.size(), 4u);
  ASSERT_TRUE(object.at("index").is_number_integer());
  EXPECT_EQ(object.at("index").get<long long>(), 0);
  ASSERT_TRUE(object.at("prompt").is_string());
  EXPECT_EQ(object.at("prompt").get<std::string>(), prompt);
  ASSERT_TRUE(object.at("completion").is_string());
  EXPECT_EQ(object.at("completion").get<std::string>(),
            "there was\ta girl \xE4\xB8\xAD" + kReplacement);
  ASSERT_TRUE(object.at("tokens").is_number_integer());
  EXPECT_EQ(object.at("tokens").get<long long>(), 12);
}

TEST(JsonLine, FieldsKeepInsertionOrderWithColonSpaceAndCommaSpace) {
  JsonLine line;
  line.field("index", 0).field("prompt", "p").field("completion", "c").field("tokens", 12);
  EXPECT_EQ(line.str(), R"({"index": 0, "prompt": "p", "completion": "c", "tokens": 12})");
}

TEST(JsonLine, NoFieldsIsAnEmptyObject) {
  EXPECT_EQ(JsonLine().str(), "{}");
  EXPECT_TRUE(nlohmann::json::parse(JsonLine().str()).empty());
}

TEST(JsonLine, KeysAreEscapedAndNumbersKeepTheirFullRange) {
  JsonLine line;
  const long long lowest = std::numeric_limits<long long>::lowest();
  const long long highest = std::numeric_limits<long long>::max();
  line.field("a \"key\"\n", lowest).field("max", highest);
  const nlohmann::json object = nlohmann::json::parse(line.str());
  EXPECT_EQ(object.at("a \"key\"\n").get<long long>(), lowest);
  EXPECT_EQ(object.at("max").get<long long>(), highest);
}

}  // namespace
}  // namespace engine
