using System.Diagnostics;
using Microsoft.ML;
using Microsoft.ML.Data;
using MLNetPeft.Display;
using MLNetPeft.BaseModel;
using MLNetPeft.BaseModel.Tasks;
using MLNetPeft.BaseModel.World;
using MLNetPeft.Generation;
using MLNetPeft.ML.FineTuning;
using MLNetPeft.ML.Generation;
using MLNetPeft.ML.Retrieval;
using MLNetPeft.Retrieval.Retrievers;
using MLNetPeft.Training;
using MLNetPeft.Tuners.Lora;

// Prompt engineering vs RAG vs fine-tuning on facts the base model has never seen: the 60 knowledge-base people of
// the bundled model's world, asked in phrasings that no training data (pretraining corpus, fine-tuning rows,
// demonstrations) ever uses. Every stage is an ML.NET pipeline; the RAG + fine-tuning model is saved, reloaded in a
// fresh MLContext and evaluated from the zip.
//
//   dotnet run -c Release --project samples/RagComparison [-- --methods a,b,c,d,d-new-names,d-true-facts]   (default a,b,c,d)
//       [--reader-prompt question-first|passage-first] [--reader-steps 1500]   (the (d) reader's prompt and LoRA steps)

string[] known = ["a", "b", "c", "d", "d-new-names", "d-true-facts"];
string? Option(string name) => args.SkipWhile(a => a != name).Skip(1).FirstOrDefault();
var methods = (Option("--methods") ?? "a,b,c,d").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
if (methods.Except(known).FirstOrDefault() is { } unknown) { Console.Error.WriteLine($"--methods: unknown method '{unknown}'; known: {string.Join(", ", known)}"); return 2; }
// The (d) reader's prompt: the question before the passage (default) lets every passage token see what is asked;
// passage-first is the prompt of (b), kept to reproduce the earlier (d) figures.
var readerPrompt = Option("--reader-prompt") ?? "question-first";
if (readerPrompt is not ("question-first" or "passage-first")) { Console.Error.WriteLine($"--reader-prompt: '{readerPrompt}' is neither question-first nor passage-first"); return 2; }
if (!int.TryParse(Option("--reader-steps") ?? "1500", out int readerSteps) || readerSteps < 1) { Console.Error.WriteLine("--reader-steps: expected a positive whole number"); return 2; }
var clock = Stopwatch.StartNew();
var ml = new MLContext(seed: 1);
var world = BaseModelRecipe.World();
var testPeople = world.KnowledgeBasePeople;
var trainPeople = InstructionTasks.TrainingSet(world);      // corpus people 0..299: fine-tuning rows and demonstrations
var validationPeople = InstructionTasks.HeldOutSet(world);  // corpus people 300..399: settings were chosen on these

// The knowledge base holds one document per person, corpus and knowledge-base people alike.
var documents = ml.Data.LoadFromEnumerable(world.People.Concat(testPeople).Select(p => new Document(p.Name, FactQuestions.Document(p))));
var test = FactQuestions.HeldOut(testPeople);
var validation = FactQuestions.Training(validationPeople, perPerson: 4, seed: 2);
var pool = FactQuestions.Training(trainPeople, perPerson: 1, seed: 3).Select(q => new Demonstration(q.Question, q.Answer)).ToList();
Console.WriteLine($"{test.Count} held-out questions ({FactQuestions.HeldOutTemplates.Sum(t => t.Count)} phrasings never used in training) about " +
    $"{testPeople.Count} knowledge-base people; {pool.Count} demonstrations and the fine-tuning rows are about corpus people");

using var model = BundledBaseModel.Load();
var tokenizer = BundledBaseModel.LoadTokenizer();
var answer = new GenerationOptions { MaxNewTokens = 8, StopStrings = [".", "\n"] };
const int Shots = 3, Passages = 1;   // one passage: hybrid search ranks the subject's document first for every training question (printed below)

// The base model's own question format (its corpus has "Q: … A: …" pairs); the RAG prompt puts the passages first.
PromptBuilderOptions ClosedBook(int shots) => new()
{
    QuestionColumnName = "Question", PassagesColumnName = null, Template = "{demonstrations}Q: {question} A:",
    DemonstrationTemplate = "Q: {question} A: {answer}. ", Demonstrations = pool, DemonstrationCount = shots, Selection = DemonstrationSelection.Nearest,
};
PromptBuilderOptions OpenBook(int shots) => new()
{
    QuestionColumnName = "Question", Template = "{context}\n{demonstrations}Q: {question} A:", PassageTemplate = "{passage}",
    DemonstrationTemplate = "Q: {question} A: {answer}. ", Demonstrations = pool, DemonstrationCount = shots, Selection = DemonstrationSelection.Nearest,
};
PromptBuilderOptions Reader() => readerPrompt == "passage-first" ? OpenBook(0) : new()
{
    QuestionColumnName = "Question", Template = "Q: {question}\n{context}\nA:", PassageTemplate = "{passage}",
};
var retrieval = new RetrievalOptions { QueryColumnName = "Question", Top = Passages, Mode = RetrievalMode.Hybrid };

// The number of passages was chosen on the training questions: how often is the subject's document the first hit?
{
    var trainingQuestions = FactQuestions.Training(trainPeople, perPerson: 8, seed: 1);
    var data = Rows(trainingQuestions);
    using var retriever = ml.Retrieval().Retrieve(documents, retrieval).Fit(data);
    var firstHits = retriever.Transform(data).GetColumn<VBuffer<ReadOnlyMemory<char>>>("PassageIds").Select(ids => ids.DenseValues().First().ToString()).ToList();
    Console.WriteLine($"retrieval ({retrieval.Mode}): the subject's document is the first passage for {trainingQuestions.Zip(firstHits).Count(x => x.First.Subject == x.Second) / (double)trainingQuestions.Count:P1} of {trainingQuestions.Count} training questions");
}

var rows = new List<(string Method, string Prompt, Score Validation, Score Test)>();
void Report(string method, string prompt, IReadOnlyList<FactQuestion> validation, Func<IReadOnlyList<FactQuestion>, IReadOnlyList<string>> answers,
    Func<IReadOnlyList<FactQuestion>, IReadOnlyList<string>>? testAnswers = null)
{
    var v = Score.Of(validation, answers(validation));
    var t = Score.Of(test, (testAnswers ?? answers)(test));
    rows.Add((method, prompt, v, t));
    Console.WriteLine($"{method}, {prompt}: validation {v.ExactMatch:P1}, test {t.ExactMatch:P1} ({clock.Elapsed:mm\\:ss})");
}
// Fits the pipeline once (Fit reads only the schema, and the pipeline's own corpus or demonstration pool) and answers
// both question sets with it.
void ReportPipeline(string method, string prompt, IEstimator<ITransformer> pipeline)
{
    var fitted = pipeline.Fit(Rows(validation));
    try { Report(method, prompt, validation, qs => fitted.Transform(Rows(qs)).GetColumn<string>("Answer").ToList()); }
    finally { (fitted as IDisposable)?.Dispose(); }
}
IDataView Rows(IReadOnlyList<FactQuestion> questions) => ml.Data.LoadFromEnumerable(questions.Select(q => new QuestionRow(q.Question, " " + q.Answer)));

// (a) Prompting only.
foreach (int shots in methods.Contains("a") ? [0, Shots] : Array.Empty<int>())
    ReportPipeline("(a) base model", shots == 0 ? "zero-shot" : $"{shots}-shot",
        ml.Transforms.Text.BuildPrompt("Prompt", ClosedBook(shots)).Append(ml.Transforms.Text.GenerateText(model, tokenizer, "Answer", options: answer)));

// (b) RAG with the base model.
foreach (int shots in methods.Contains("b") ? [0, Shots] : Array.Empty<int>())
    ReportPipeline("(b) RAG, base model", shots == 0 ? "zero-shot" : $"{shots}-shot",
        ml.Retrieval().Retrieve(documents, retrieval)
            .Append(ml.Transforms.Text.BuildPrompt("Prompt", OpenBook(shots)))
            .Append(ml.Transforms.Text.GenerateText(model, tokenizer, "Answer", options: answer)));

// (c) Fine-tuning on the knowledge-base documents (continued pretraining with LoRA), then asked without retrieval.
if (methods.Contains("c"))
{
    var knowledgeBase = ml.Data.LoadFromEnumerable(testPeople.Select(p => new DocumentText(FactQuestions.Document(p))));
    using var memorised = ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, new CausalLmFineTuningOptions
    {
        TextColumnName = "Text", MaxLength = 128, Generation = answer, Seed = 1,
        Lora = new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = [LoraConfig.AllLinear] },
        Training = new TrainingOptions { MaxSteps = 300, BatchSize = 8, LearningRate = 2e-3, WarmupSteps = 10, WeightDecay = 0, Seed = 1 },
    }).Fit(knowledgeBase);
    Console.WriteLine($"(c) fine-tuned on the {testPeople.Count} knowledge-base documents ({clock.Elapsed:mm\\:ss})");
    foreach (int shots in new[] { 0, Shots })
        Report("(c) fine-tuned on the documents", shots == 0 ? "zero-shot" : $"{shots}-shot", validation, qs =>
        {
            // The fine-tuned transformer continues its training column, so the prompt is written there.
            var data = Rows(qs);
            using var prompts = ml.Transforms.Text.BuildPrompt("Text", ClosedBook(shots)).Fit(data);
            return memorised.Transform(prompts.Transform(data)).GetColumn<string>("GeneratedText").ToList();
        });
}

// (d) RAG + fine-tuning: LoRA on retrieval-formatted questions about corpus people, then asked about knowledge-base
// people with retrieval. The training documents state facts of the corpus people drawn anew (Draws times, each draw
// its own knowledge base), so the answer is only in the passage: trained on their true facts the model answers from
// its weights and ignores the context ("d-true-facts" shows it).
const int Draws = 4;
// "d-new-names" trains on whole new worlds instead (other seeds: new people, friends, siblings and pets, names the
// model has never read), so that copying a name from the passage, not recalling it, is what the rows reward.
foreach (var variant in new[] { "d", "d-new-names", "d-true-facts" }.Where(methods.Contains))
{
    IReadOnlyList<Person> Draw(int seed) => variant switch
    {
        "d" => SyntheticWorld.Redraw(world.People, seed),
        "d-new-names" => new SyntheticWorld(1000 + seed).People,
        _ => world.People,
    };
    var training = ml.Data.LoadFromEnumerable(Enumerable.Range(0, Draws).Select(d => (Seed: 21 + d, People: Draw(21 + d))).SelectMany(draw =>
        RetrievalPrompts(draw.People, FactQuestions.Training(draw.People.Take(InstructionTasks.TrainingPeople).ToList(), perPerson: 8, seed: draw.Seed))).ToList());
    var display = new TrainingDisplay(readerSteps) { LineInterval = Math.Max(1, readerSteps / 6) };
    using var reader = display.Run(() => ml.Transforms.Text.FineTuneCausalLm(model, tokenizer, new CausalLmFineTuningOptions
    {
        PromptColumnName = "Prompt", ResponseColumnName = "Response", OutputColumnName = "Answer", MaxLength = 256, Generation = answer, Seed = 1,
        Lora = new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = [LoraConfig.AllLinear] },
        Training = new TrainingOptions { MaxSteps = readerSteps, BatchSize = 16, LearningRate = 3e-3, WarmupSteps = 20, WeightDecay = 0, Seed = 1 },
        Progress = display,
    }).Fit(training));
    display.SavePlot(Path.Combine(Path.GetTempPath(), $"mlnetpeft-rag-comparison-{variant}-loss.png"), $"RAG reader ({variant}): LoRA SFT on retrieved passages");

    // The deployed pipeline: retrieval over the real knowledge base, the prompt, the tuned reader; saved and reloaded.
    var questions = Rows(test);
    var rag = ml.Retrieval().Retrieve(documents, retrieval).Append(ml.Transforms.Text.BuildPrompt("Prompt", Reader())).Fit(questions).Append(reader);
    var zip = Path.Combine(Path.GetTempPath(), $"mlnetpeft-rag-comparison-{variant}.zip");
    ml.Model.Save(rag, questions.Schema, zip);
    foreach (var stage in rag.Take(2)) (stage as IDisposable)?.Dispose();   // the reader is disposed by its using
    var fresh = new MLContext(seed: 2);
    var reloaded = fresh.Model.Load(zip, out _);
    Console.WriteLine($"({variant}) reader tuned on {training.GetRowCount()} retrieval prompts; RAG pipeline saved ({new FileInfo(zip).Length / 1e6:F1} MB) and reloaded ({clock.Elapsed:mm\\:ss})");

    // Validation: other corpus people (300..399) of another draw, retrieved from that draw's documents.
    var validationDraw = Draw(11);
    var validationQuestions = FactQuestions.Training(validationDraw.Skip(InstructionTasks.TrainingPeople).ToList(), perPerson: 4, seed: 2);
    Report(variant switch { "d" => "(d) RAG + fine-tuning", "d-new-names" => "(d) RAG + fine-tuning on new worlds' people", _ => "(d) RAG + fine-tuning on true facts (ablation)" }, "zero-shot", validationQuestions,
        qs => reader.Transform(ml.Data.LoadFromEnumerable(RetrievalPrompts(validationDraw, qs))).GetColumn<string>("Answer").ToList(),
        qs => reloaded.Transform(fresh.Data.LoadFromEnumerable(qs.Select(q => new QuestionRow(q.Question, " " + q.Answer)))).GetColumn<string>("Answer").ToList());
    (reloaded as IDisposable)?.Dispose();
}

// Retrieval-formatted rows: each question's prompt over the documents of `people`, and its answer.
List<PromptRow> RetrievalPrompts(IReadOnlyList<Person> people, IReadOnlyList<FactQuestion> questions)
{
    var corpus = ml.Data.LoadFromEnumerable(people.Select(p => new Document(p.Name, FactQuestions.Document(p))));
    var data = Rows(questions);
    var prompts = ml.Retrieval().Retrieve(corpus, retrieval).Append(ml.Transforms.Text.BuildPrompt("Prompt", Reader())).Fit(data);
    try { return ml.Data.CreateEnumerable<PromptRow>(prompts.Transform(data), reuseRowObject: false).ToList(); }
    finally { foreach (var stage in prompts) (stage as IDisposable)?.Dispose(); }
}

Console.WriteLine();
Console.WriteLine($"| method | prompt | validation EM (corpus people 300–399, training phrasings) | test EM ({test.Count}, knowledge-base people, held-out phrasings) | " +
    string.Join(" | ", FactQuestions.FactNames) + " |");
Console.WriteLine("|---|---|---|---|" + string.Concat(FactQuestions.FactNames.Select(_ => "---|")));
foreach (var (method, prompt, v, t) in rows)
    Console.WriteLine($"| {method} | {prompt} | {v.ExactMatch:P1} | **{t.ExactMatch:P1}** | " + string.Join(" | ", FactQuestions.FactNames.Select(f => t.ByFact[f].ToString("P0"))) + " |");
Console.WriteLine();
Console.WriteLine($"exact match after trimming, trailing punctuation removed, case ignored; retrieval: {retrieval.Mode}, top {Passages}; (d) reader: {readerPrompt}, {readerSteps} steps; total {clock.Elapsed:mm\\:ss}");
return 0;

sealed record Document(string Id, string Text);
sealed record QuestionRow(string Question, string Response);
sealed record DocumentText(string Text);
sealed class PromptRow { public string Prompt { get; set; } = ""; public string Response { get; set; } = ""; }

sealed record Score(double ExactMatch, IReadOnlyDictionary<string, double> ByFact)
{
    public static Score Of(IReadOnlyList<FactQuestion> questions, IReadOnlyList<string> answers)
    {
        var right = questions.Zip(answers, (q, a) => (q.Fact, Right: FactQuestions.IsExactMatch(a, q.Answer))).ToList();
        return new Score(right.Count(r => r.Right) / (double)right.Count,
            right.GroupBy(r => r.Fact).ToDictionary(g => g.Key, g => g.Count(r => r.Right) / (double)g.Count()));
    }
}
