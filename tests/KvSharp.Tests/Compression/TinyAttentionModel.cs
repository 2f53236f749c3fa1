using KvSharp.Models;
using KvSharp.Tests.Reference;
using KvSharp.Tokenization;

namespace KvSharp.Tests.Compression;

/// <summary>
/// A tiny random model, its float64 oracle's attention weights, and a character tokenizer for prompts: what the
/// attention-scorer and calibration tests check the engine against.
/// </summary>
internal sealed class TinyAttentionModel : IDisposable
{
    public TinyAttentionModel(string config = "gqa2-halfsplit-tied", int seed = 5)
    {
        Model = ReferenceModels.CreateRandom(ReferenceModels.RandomConfig(config), seed);
        Engine = new Transformer(Model.Weights);
        Tokenizer = new CharTokenizer(Model.Config.VocabSize);
    }

    public RandomModel Model { get; }
    public Transformer Engine { get; }
    public ITokenizer Tokenizer { get; }
    public ModelConfig Config => Model.Config;
    public int Group => Config.NumHeads / Config.NumKvHeads;

    /// <summary>Softmax weights [layer][query position][query head] over positions 0..query, from the float64 oracle.</summary>
    public double[][][][] OracleWeights(int[] tokens)
    {
        var c = Config;
        var w = new double[c.NumLayers][][][];
        for (int l = 0; l < c.NumLayers; l++)
        {
            w[l] = new double[tokens.Length][][];
            for (int t = 0; t < tokens.Length; t++) w[l][t] = new double[c.NumHeads][];
        }
        var oracle = new ReferenceTransformer(c, ReferenceWeights.FromDictionary(Model.Tensors)) { AttentionWeights = (l, t, h, p) => w[l][t][h] = p };
        oracle.Forward(tokens);
        return w;
    }

    public void Dispose() => Model.Dispose();

    /// <summary>A character-per-token stand-in for the models' vocabularies (random models have 50-80 ids).</summary>
    private sealed class CharTokenizer(int vocab) : ITokenizer
    {
        public int VocabSize => vocab;
        public int? BosId => 0;
        public IReadOnlyList<int> EosIds => [1];
        public bool AddsBos => true;
        public int[] Encode(string text, bool addSpecial = true, bool parseSpecial = true) =>
            [.. addSpecial ? new[] { 0 } : [], .. text.Select(ch => 2 + ch % (vocab - 2))];
        public byte[] TokenBytes(int id) => [(byte)id];
        public bool IsSpecial(int id) => id < 2;
        public string Decode(IEnumerable<int> ids, bool skipSpecial = true) => string.Concat(ids.Select(i => (char)i));
    }
}
