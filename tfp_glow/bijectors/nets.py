"""The Keras networks inside the flow: the coupling network and the zero-initialized conv.

Mixed precision: these networks are the only part of the flow that computes in low precision. Under a
Keras mixed policy (`keras.mixed_precision.set_global_policy('mixed_bfloat16')` or 'mixed_float16'),
`network_policy(tf.float32)` gives that policy to the networks (float32 variables, bfloat16/float16
convolutions); the bijectors cast the networks' outputs back to float32, so actnorm, the 1x1
convolutions, the coupling arithmetic, log-determinants and priors stay float32.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from tfp_glow.bijectors.xla_conv import conv2d
from tfp_glow.names import MIXED_POLICIES

# exp(LOGSCALE_FACTOR * logs) scales the zero-initialized last layers' outputs (the reference's value)
LOGSCALE_FACTOR = 3.0


def network_policy(flow_dtype: tf.DType | str) -> str:
  """The Keras dtype policy for a network inside a flow of `flow_dtype`: the global mixed policy if one
  is set and the flow is float32, else the flow's dtype."""
  flow_dtype = tf.as_dtype(flow_dtype)
  policy = keras.mixed_precision.global_policy().name
  return policy if (policy in MIXED_POLICIES and flow_dtype == tf.float32) else flow_dtype.name


@keras.saving.register_keras_serializable(package='tfp_glow')
class ZeroConv2D(keras.layers.Layer):
  """The reference code's "Conv2dZeros": a zero-initialized 3x3 conv with a learned output scale.

    y = (conv3x3(x; kernel) + bias) * exp(logscale_factor * logs)      per output channel

  kernel, bias and logs all start at zero, so y starts at zero: a coupling or a prior that ends
  with this layer starts as the identity (resp. N(0, 1)). The exp(3 * logs) factor lets the output
  scale grow quickly once training starts.
  Shapes: [N, H, W, C_in] -> [N, H, W, filters].
  """

  def __init__(
    self, filters: int, kernel_size: int = 3, logscale_factor: float = LOGSCALE_FACTOR, **kwargs: Any
  ):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.logscale_factor = logscale_factor
    self.conv = keras.layers.Conv2D(
      filters,
      kernel_size,
      padding='same',
      kernel_initializer='zeros',
      bias_initializer='zeros',
      dtype=self.dtype_policy,
      name='conv',
    )

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    self.conv.build(input_shape)
    self.logs = self.add_weight(shape=(self.filters,), initializer='zeros', name='logs')

  def call(self, x: tf.Tensor) -> tf.Tensor:
    return self.conv(x) * keras.ops.exp(self.logs * self.logscale_factor)

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    return tuple(input_shape[:-1]) + (self.filters,)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      'filters': self.filters,
      'kernel_size': self.kernel_size,
      'logscale_factor': self.logscale_factor,
    }


def coupling_network(
  in_channels: int,
  out_channels: int,
  width: int = 512,
  dtype: tf.DType | str = 'float32',
  name: str = 'coupling_nn',
) -> keras.Sequential:
  """The affine coupling's network NN(x_a), after the reference code, with biases for actnorm.

    conv3x3(width) -> bias -> ReLU -> conv1x1(width) -> bias -> ReLU -> ZeroConv2D(out_channels)

  The reference puts a data-initialized actnorm where we put a bias; a bias needs no
  initialization pass and the zero-initialized last layer keeps the coupling the identity at start.
  Shapes: [N, H, W, in_channels] -> [N, H, W, out_channels]; any H, W (all convs are 'same').
  `dtype`: a dtype or a Keras policy name ('mixed_bfloat16': float32 variables, bfloat16 compute;
  the output is then bfloat16).
  """
  dtype = dtype if dtype in MIXED_POLICIES else tf.as_dtype(dtype).name
  net = keras.Sequential(
    [
      keras.Input(shape=(None, None, in_channels), dtype=keras.DTypePolicy(dtype).variable_dtype),
      keras.layers.Conv2D(width, 3, padding='same', activation='relu', dtype=dtype, name='conv_in'),
      keras.layers.Conv2D(width, 1, padding='same', activation='relu', dtype=dtype, name='conv_hidden'),
      ZeroConv2D(out_channels, dtype=dtype, name='conv_out'),
    ],
    name=name,
  )
  return net


def coupling_network_weights(network: keras.Sequential) -> list[keras.Variable]:
  """The variables of a `coupling_network`, in the order `apply_coupling_network` takes them:
  [conv_in kernel, bias, conv_hidden kernel, bias, conv_out kernel, bias, logs]."""
  conv_in, conv_hidden, conv_out = (network.get_layer(n) for n in ('conv_in', 'conv_hidden', 'conv_out'))
  return [
    conv_in.kernel,
    conv_in.bias,
    conv_hidden.kernel,
    conv_hidden.bias,
    conv_out.conv.kernel,
    conv_out.conv.bias,
    conv_out.logs,
  ]


def apply_coupling_network(
  weights: list[tf.Tensor],
  x: tf.Tensor,
  compute_dtype: tf.DType | str,
  logscale_factor: float = LOGSCALE_FACTOR,
  context: tf.Tensor | None = None,
) -> tf.Tensor:
  """`coupling_network`'s function with its weights as arguments (what `tfp_glow.flow.stack.StepStack` needs):
  the same ops as the Keras layers, computed in `compute_dtype` (bfloat16/float16 under a mixed policy,
  the weights cast as Keras casts them). [N, H, W, in_channels] -> [N, H, W, out_channels]. `context`
  ([N, E]): see `coupling_network_activations`."""
  return coupling_network_activations(weights, x, compute_dtype, logscale_factor, context)[0]


def coupling_network_activations(
  weights: list[tf.Tensor],
  x: tf.Tensor,
  compute_dtype: tf.DType | str,
  logscale_factor: float = LOGSCALE_FACTOR,
  context: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
  """`apply_coupling_network`, also returning what `coupling_network_vjp` needs, all in `compute_dtype`:
  (out, (a1, a2, pre)), with a1, a2 the two hidden ReLU outputs [N, H, W, width] and pre the last
  convolution's output before its exp(logscale_factor * logs) scale [N, H, W, out_channels].

  With a `context` c [N, E] (and the context kernel W_c [E, width], the 8th weight) the first hidden layer is
    a1 = relu(conv3x3(x) + b_in + c @ W_c)        c @ W_c [N, width], the same at every pixel
  Without one (or without W_c) the ops are the paper's network's, unchanged."""
  k_in, b_in, k_hidden, b_hidden, k_out, b_out, logs = (tf.cast(w, compute_dtype) for w in weights[:7])
  z1 = tf.nn.bias_add(conv2d(tf.cast(x, compute_dtype), k_in), b_in)
  if context is not None:
    z1 += context_projection(weights, context, compute_dtype)[:, None, None, :]
  a1 = tf.nn.relu(z1)
  a2 = tf.nn.relu(tf.nn.bias_add(conv2d(a1, k_hidden), b_hidden))
  pre = tf.nn.bias_add(conv2d(a2, k_out), b_out)
  return pre * tf.exp(logs * logscale_factor), (a1, a2, pre)


def context_projection(
  weights: list[tf.Tensor], context: tf.Tensor, compute_dtype: tf.DType | str
) -> tf.Tensor:
  """c @ W_c [N, width] in `compute_dtype`: what a context adds to the first hidden layer's pre-activation.
  Refuses a network built without a context kernel (`context_size` None) and a context of the wrong size."""
  if len(weights) < 8:
    raise ValueError("The 'conv' conditioner got a context but was built without context_size.")
  kernel = weights[7]
  if context.shape.rank != 2 or context.shape[-1] != kernel.shape[0]:
    raise ValueError(
      f"The 'conv' conditioner's context must be [N, {kernel.shape[0]}] (its context_size), got {context.shape}."
    )
  return tf.matmul(tf.cast(context, compute_dtype), tf.cast(kernel, compute_dtype))


class StackedCouplingNetworks(keras.layers.Layer):
  """The weights of K `coupling_network`s, each stacked over the K steps of a Glow level ([K, ...]), in
  `coupling_network_weights`' order (`weights_in_order()`): what lets a level run its K couplings as one
  loop with a handful of variables (`tfp_glow.flow.stack.StepStack`). Step k's network is
  `apply_coupling_network([w[k] for w in weights_in_order()], x, compute_dtype)`.

  Each step's weights start as a `coupling_network`'s do: Glorot-uniform kernels (drawn per step, with
  that step's fan-in and fan-out), zero biases, and a zero last layer (the coupling starts as the identity).
  `dtype`: a dtype or a Keras mixed policy name (float32 variables, low-precision compute). `context_size` E:
  also a context kernel [K, E, width] (Glorot-uniform), last in `weights_in_order()`, which projects a context
  [N, E] onto the first hidden layer (`coupling_network_activations`); None: none (the paper's network).
  """

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    width: int,
    steps: int,
    dtype: tf.DType | str = 'float32',
    name: str = 'coupling_nn',
    context_size: int | None = None,
  ):
    dtype = dtype if dtype in MIXED_POLICIES else tf.as_dtype(dtype).name
    super().__init__(dtype=dtype, name=name)

    def per_step(shape, dtype=None):
      # Glorot's fans are those of one step's kernel, not of the stack's shape. One initializer per step:
      # an unseeded Keras initializer draws its seed once, so reusing one would start every step equal.
      return tf.stack([keras.initializers.GlorotUniform()(shape[1:], dtype=dtype) for _ in range(shape[0])])

    def weight(shape, initializer, name):
      return self.add_weight(shape=(steps, *shape), initializer=initializer, name=name)

    self.conv_in_kernel = weight((3, 3, in_channels, width), per_step, 'conv_in_kernel')
    self.conv_in_bias = weight((width,), 'zeros', 'conv_in_bias')
    self.conv_hidden_kernel = weight((1, 1, width, width), per_step, 'conv_hidden_kernel')
    self.conv_hidden_bias = weight((width,), 'zeros', 'conv_hidden_bias')
    self.conv_out_kernel = weight((3, 3, width, out_channels), 'zeros', 'conv_out_kernel')
    self.conv_out_bias = weight((out_channels,), 'zeros', 'conv_out_bias')
    self.conv_out_logs = weight((out_channels,), 'zeros', 'conv_out_logs')
    self.context_kernel = None
    if context_size is not None:
      self.context_kernel = weight((context_size, width), per_step, 'conv_in_context_kernel')
    self.built = True

  def weights_in_order(self) -> list[keras.Variable]:
    ordered = [
      self.conv_in_kernel,
      self.conv_in_bias,
      self.conv_hidden_kernel,
      self.conv_hidden_bias,
      self.conv_out_kernel,
      self.conv_out_bias,
      self.conv_out_logs,
    ]
    return ordered if self.context_kernel is None else [*ordered, self.context_kernel]

  def call(self, inputs: Any) -> Any:  # Keras wants a call; this layer is read, never called.
    return inputs
