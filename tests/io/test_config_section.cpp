#include "kiln/io/config_section.h"

#include <gtest/gtest.h>

#include <vector>

#include "io/io_test_util.h"

namespace kiln {
namespace {

using testing::error_of;
using testing::has;

TEST(ConfigSection, ReadsNamedKeysAndKeepsDefaults) {
  YAML::Node root = YAML::Load("lr: 3e-4\nsteps: 20\nnames: [a, b]\n");
  ConfigSection s(root, "config", "run.yaml", "optim");
  float lr = 1;
  int steps = 0, warmup = 7;
  std::vector<std::string> names;
  s.get("lr", lr);
  s.get("steps", steps);
  s.get("warmup", warmup);  // absent: the default stays
  s.get("names", names);
  s.finish();
  EXPECT_FLOAT_EQ(lr, 3e-4f);
  EXPECT_EQ(steps, 20);
  EXPECT_EQ(warmup, 7);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b"}));
}

TEST(ConfigSection, AbsentOrNullSectionKeepsEveryDefault) {
  for (const YAML::Node& n : {YAML::Node(), YAML::Load("~")}) {
    ConfigSection s(n, "config", "run.yaml", "train");
    int steps = 5;
    s.get("steps", steps);
    EXPECT_FALSE(s.take("model"));
    s.finish();
    EXPECT_EQ(steps, 5);
  }
}

TEST(ConfigSection, UnknownKeyIsNamedWithItsLineAndTheKnownKeys) {
  YAML::Node root = YAML::Load("lr: 1\n\nlrr: 2\n");
  ConfigSection s(root, "config", "run.yaml", "optim");
  float lr = 0;
  s.get("lr", lr);
  s.get("beta1", lr);
  const std::string msg = error_of([&] { s.finish(); });
  EXPECT_TRUE(has(msg, "[config] run.yaml: unknown key 'optim.lrr' (line 3)")) << msg;
  EXPECT_TRUE(has(msg, "known keys in optim: beta1, lr")) << msg;
}

TEST(ConfigSection, TopLevelKeysHaveNoPrefix) {
  ConfigSection s(YAML::Load("min_doc_word: 3\n"), "curate config", "c.yaml");
  int words = 0;
  s.get("min_doc_words", words);
  EXPECT_TRUE(has(error_of([&] { s.finish(); }), "unknown key 'min_doc_word' (line 1)"));
}

TEST(ConfigSection, WrongTypeNamesKeyValueAndLine) {
  ConfigSection s(YAML::Load("a: 1\nsteps: lots\n"), "config", "run.yaml", "train");
  int steps = 0;
  const std::string msg = error_of([&] { s.get("steps", steps); });
  EXPECT_TRUE(has(msg, "'train.steps' has an invalid value 'lots' (line 2)")) << msg;
}

TEST(ConfigSection, TakenKeysAreKnownAndACheckNamesTheKey) {
  ConfigSection s(YAML::Load("blend: 3\n"), "config", "run.yaml", "data");
  YAML::Node blend = s.take("blend");
  s.finish();  // taken: known
  ASSERT_TRUE(blend);
  EXPECT_TRUE(has(error_of([&] { s.bad_value("blend", "must be a list"); }),
                  "'data.blend' has an invalid value '3' (line 1): must be a list"));
}

TEST(ConfigSection, ASectionThatIsNotAMappingIsAnError) {
  EXPECT_TRUE(
      has(error_of([] { ConfigSection s(YAML::Load("[1, 2]"), "config", "r.yaml", "optim"); }),
          "'optim' must be a mapping of settings"));
}

TEST(ConfigSection, ReadingDoesNotAddKeys) {
  YAML::Node root = YAML::Load("a: 1\n");
  ConfigSection s(root, "config", "r.yaml");
  int b = 0;
  s.get("b", b);
  s.take("c");
  EXPECT_FALSE(s.has("b"));
  EXPECT_EQ(root.size(), 1u);  // lookups of absent keys leave the document as it was
}

}  // namespace
}  // namespace kiln
